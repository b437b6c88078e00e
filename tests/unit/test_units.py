"""Durations, sizes and addresses parse the way the config reference says."""

import pytest

from agent.units import format_duration, format_time, is_loopback_host, one_line, parse_address, parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("1m30s", 90.0), (3, 3.0), (0.25, 0.25), ("1.5", 1.5),
])
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["fast", "", "2x", "s", "-1s", True, None, [], "1s2", "nan", "inf"])
def test_bad_durations_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_durations_format_back_to_their_short_spelling() -> None:
    assert [format_duration(s) for s in (0.5, 2.0, 1.5, 0.0, 90, 7200, 3661.5)] == [
        "500ms", "2s", "1.5s", "0s", "1m30s", "2h", "1h1m1.5s"]
    assert all(parse_duration(format_duration(s)) == s for s in (0.25, 59.5, 61, 86400))


@pytest.mark.parametrize(("text", "size"), [
    ("512Mi", 512 * 2**20), ("2Gi", 2 * 2**30), ("100M", 100 * 10**6), (4096, 4096), ("1Ki", 1024), ("10", 10),
])
def test_sizes_parse_to_bytes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["big", "1Xi", -1, True, "1 Mo"])
def test_bad_sizes_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_addresses_split_into_host_and_port() -> None:
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address(":8686", default_host="0.0.0.0") == ("0.0.0.0", 8686)
    assert parse_address("[::]:8686") == ("::", 8686)


@pytest.mark.parametrize("text", ["nohost", "host:0", "host:65536", "host:http", ":80",
                                  "::1:80", "[::1:80", "[db]:80", "[127.0.0.1]:80", "db]:80"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_loopback_hosts_are_recognised() -> None:
    assert all(map(is_loopback_host, ["localhost", "LocalHost", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "::ffff:127.0.0.1",
                                      "::1%lo", "ip6-localhost"]))
    assert not any(map(is_loopback_host, ["db", "10.0.0.1", "example.com", "0.0.0.0", "::", "::ffff:10.0.0.1", "", None,
                                          "127.example.com"]))


def test_times_are_utc_iso_with_milliseconds() -> None:
    assert format_time(0.25) == "1970-01-01T00:00:00.250Z"
    assert format_time(1767323045.5) == "2026-01-02T03:04:05.500Z"


def test_one_line_folds_white_space_and_cuts_at_the_end_or_in_the_middle() -> None:
    assert one_line(" a\n\tb  c ") == "a b c"
    assert one_line("x" * 10, 10) == "x" * 10
    assert one_line("abcdefghijkl", 10) == "abcdefg..."
    assert one_line("abcdefghijklmnopqrst", 15, tail=4) == "abcdef ... qrst"

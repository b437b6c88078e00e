"""The config's scalar units parsed, and the agent's output formatted: durations, sizes, addresses, times, messages."""

from __future__ import annotations

import ipaddress
import re
import time

LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|K|M|G|T)?B?")
_SIZE_SCALE = {
    None: 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `2s`, `1m30s`, `1h` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 2s")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("expected a duration like 2s") from None
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except (ValueError, OverflowError):
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_SCALE[match.group(2)]  # inf for huge: refused below
                pos = match.end()
            if pos == 0 or pos != len(text):
                raise ValueError("expected a duration like 2s") from None
    else:
        raise ValueError("expected a duration like 2s")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError("expected a duration like 2s")
    return seconds


def format_duration(seconds: float) -> str:
    """The config spelling of a duration: `500ms`, `2s`, `1.5s`, `1m30s`, `2h`."""
    if seconds and seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{int(hours)}h" if hours else "", f"{int(minutes)}m" if minutes else "", f"{round(secs, 3):g}s" if secs else ""]
    return "".join(parts)


def parse_size(value: object) -> int:
    """Bytes from `512Mi`, `2Gi`, `100M` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512Mi")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a size like 512Mi")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            return int(float(match.group(1)) * _SIZE_SCALE[match.group(2)])
    raise ValueError("expected a size like 512Mi")


def parse_address(value: object, *, default_host: str | None = None, any_port: bool = False) -> tuple[str, int]:
    """(host, port) from `host:port`, `[::1]:port` (IPv6 in brackets) or `:port` (when a default host is given).

    `any_port` also accepts port 0 (a free port, for tests and benchmarks).
    """
    if not isinstance(value, str):
        raise ValueError(f"expected an address like 127.0.0.1:8080, got {value!r}")
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected an address like 127.0.0.1:8080, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address between the brackets, like [::1]:8686, got {text!r}") from None
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"an IPv6 address goes between brackets, like [::1]:8686 or [::]:8686, got {text!r}")
    if not host:
        if default_host is None:
            raise ValueError("expected an address like 127.0.0.1:8080 (the host is missing)")
        host = default_host
    if not port_text.isdigit() or not (0 if any_port else 1) <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from {0 if any_port else 1} to 65535, got {port_text!r}")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """`host:port`, bracketing IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback_host(host: str | None) -> bool:
    """True for a name or address that stays on this host: localhost, 127.0.0.0/8 and ::1 (also IPv4-mapped,
    bracketed, or with a zone)."""
    if not host:
        return False
    text = host.strip("[]").split("%")[0].lower()
    if text in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def format_time(epoch: float) -> str:
    """Epoch seconds as UTC ISO 8601 with milliseconds: `2026-01-02T03:04:05.678Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def one_line(text: str, limit: int | None = None, *, tail: int = 0) -> str:
    """`text` on one line (each run of white space one space), cut to `limit` characters if given: in the middle,
    keeping the last `tail` characters after ` ... `, or at the end with `...` when `tail` is 0."""
    text = " ".join(text.split())
    if limit is None or len(text) <= limit:
        return text
    if tail:
        return text[:limit - tail - 5] + " ... " + text[-tail:]
    return text[:limit - 3] + "..."

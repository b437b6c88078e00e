"""The one YAML reader of the config loader and lint: lines kept, duplicate keys refused, every error with its line."""

from __future__ import annotations

import pytest

from agent.yamlread import SEVERAL_DOCUMENTS, Node, YamlError, line_of, read_document, read_documents


def error(data: str | bytes) -> YamlError:
    with pytest.raises(YamlError) as info:
        read_documents(data)
    return info.value


def test_mappings_remember_their_line_and_each_key_line() -> None:
    doc = read_document("a: 1\nb:\n  c: 2\n\n  d: [x]\n")
    assert isinstance(doc, Node) and doc.line == 1
    assert (line_of(doc, "a"), line_of(doc, "b"), line_of(doc["b"], "d"), line_of(doc["b"])) == (1, 2, 5, 3)
    assert line_of(doc, "missing") == 1 and line_of({"a": 1}, "a") is None


def test_without_lines_mappings_are_plain_dicts() -> None:
    doc = read_document("a: {b: 1}\n", lines=False)
    assert type(doc) is dict and type(doc["a"]) is dict and doc == {"a": {"b": 1}}


def test_documents_carry_the_line_they_start_on() -> None:
    docs = read_documents("# head\na: 1\n---\n---\nb: 2\n")
    assert [(d.line, d.body) for d in docs] == [(2, {"a": 1}), (4, None), (5, {"b": 2})]
    assert read_documents("") == [] and read_document("") is None


def test_several_documents_are_one_error_for_a_single_document_reader() -> None:
    with pytest.raises(YamlError) as info:
        read_document("a: 1\n---\nb: 2\n")
    assert str(info.value) == SEVERAL_DOCUMENTS and info.value.line is None


def test_a_duplicate_key_is_refused_with_its_line() -> None:
    found = error("a: 1\nb:\n  c: 1\n  c: 2\n")
    assert str(found) == "line 4, column 3: duplicate key 'c' (YAML would keep only the last one)"


def test_a_key_merged_in_may_be_set_again_but_not_twice_by_the_mapping_itself() -> None:
    doc = read_document("base: &b {x: 1, y: 2}\nuse: {<<: *b, x: 3}\n")
    assert doc["use"] == {"x": 3, "y": 2}
    assert error("base: &b {x: 1}\nuse: {<<: *b, x: 3, x: 4}\n").line == 2


@pytest.mark.parametrize("text", ["{[a]: 1}", "{{a: 1}: 1}", "{~: 1}", "{2001-01-01: x}"])
def test_a_key_that_is_no_plain_scalar_is_refused(text: str) -> None:
    assert error("a: 1\nb: " + text + "\n").message == "a key must be a plain string"


@pytest.mark.parametrize(("text", "says"), [
    ("2001-13-45", "cannot read this timestamp: month must be in 1..12 (quote it to keep it a string)"),
    ("2001-01-01 00:00:00 +99:00", "cannot read this timestamp: offset must be a timedelta"),
    ("9" * 5000, "cannot read this int: Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits "
                 "(quote it to keep it a string)"),
    ("0x" + "f" * 5000, "cannot read this int: it has over 4300 digits"),  # Python reads it, but cannot print it
    ("!!int", "cannot read this int"),
    ("!!int 0x", "cannot read this int: invalid literal"),
    ("!!bool maybe", "cannot read this bool"),
    ("!!timestamp soon", "cannot read this timestamp"),
    ("!!float x", "cannot read this float: could not convert"),
    ("!!binary x", "failed to decode base64 data"),
])
def test_a_scalar_that_cannot_be_built_is_an_error_on_its_line(text: str, says: str) -> None:
    found = error(f"first: 1\nsecond: {text}\n")
    assert (found.line, found.column) == (2, 9) and found.message.startswith(says), found


def test_a_quoted_date_stays_a_string() -> None:
    assert read_document("a: '2001-13-45'\n") == {"a": "2001-13-45"}


def test_bytes_that_are_not_utf8_are_an_error_on_their_line() -> None:
    found = error(b"a: 1\nb: '\xff'\n")
    assert str(found) == "line 2: not UTF-8 text: byte 9 (b'\\xff') is not valid UTF-8"


def test_a_byte_order_mark_is_skipped() -> None:
    assert read_document(b"\xef\xbb\xbfa: 1\n") == {"a": 1} == read_document("\ufeffa: 1\n")


def test_a_forbidden_character_is_an_error_on_its_line() -> None:
    assert str(error("a: 1\nb: 'x\x01'\n")) == "line 2: character U+0001 is not allowed in YAML"


def test_syntax_errors_and_deep_nesting_give_a_line() -> None:
    assert str(error("a: 1\nb: [1, 2\n")).startswith("line 3, column 1: not valid YAML: ")
    assert error("a: 1\nb: " + "[" * 5000 + "\n").message == "not valid YAML: nested too deeply"

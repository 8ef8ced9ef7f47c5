"""server/jsonbody.py: the one JSON parser for client bodies and messages (findings of
tests/fuzz: deep nesting and lone surrogates)."""

from __future__ import annotations

import json

import pytest

from server.jsonbody import loads


def test_plain_json_parses_as_json_loads_does() -> None:
    text = '{"a": [1, 2.5, true, null, "x\\u00e9\\ud83e\\udd8a"]}'
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)
    assert loads(text.encode("utf-16")) == json.loads(text)


@pytest.mark.parametrize("text", ["[" * 100_000, "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000])
def test_nesting_too_deep_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)


@pytest.mark.parametrize("raw", [b"\xff", b'["\xc3\x28"]', b"not json", b""])
def test_what_is_not_json_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        loads(raw)


def test_lone_surrogates_become_the_replacement_character_in_keys_and_values() -> None:
    parsed = loads(b'{"k\\ud800": ["a\\udfffb", {"\\udc00": "\\ud83e\\udd8a\\ud83e"}]}')
    assert parsed == {"k\ufffd": ["a\ufffdb", {"\ufffd": "\U0001f98a\ufffd"}]}
    assert json.dumps(parsed, ensure_ascii=False).encode("utf-8")  # encodable now


def test_surrogates_decoded_from_bytes_are_replaced_too() -> None:
    # json.loads decodes bytes with surrogatepass: UTF-8-encoded surrogates get through it.
    assert loads(b'["\xed\xa0\x80"]') == ["\ufffd"]
    assert loads('["\\ud800"]'.encode("utf-16")) == ["\ufffd"]


def test_a_deep_but_parseable_document_is_cleaned_without_recursion() -> None:
    depth = 800  # near the parser's limit: a recursive walk from a deep call stack could fail
    parsed = loads("[" * depth + '"\\ud800"' + "]" * depth)
    for _ in range(depth):
        (parsed,) = parsed
    assert parsed == "\ufffd"


def test_options_pass_through() -> None:
    def refuse(name: str) -> None:
        raise ValueError(name)

    with pytest.raises(ValueError):
        loads("[NaN]", parse_constant=refuse)

"""Strict JSON: what Lambda accepts, and a typed refusal (never a RecursionError) for everything else."""

from __future__ import annotations

import json
import sys

import pytest

from kambda import jsontext
from kambda.jsontext import MAX_DEPTH, InvalidJSON


def nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b'{"a": [1, 2.5, "x", true, null]}', {"a": [1, 2.5, "x", True, None]}),
        (b"  42 \n", 42),
        ('"caf\u00e9"'.encode(), "café"),
        (b'{"s": "\\ud83d\\ude00 [[[{{{"}', {"s": "😀 [[[{{{"}),  # brackets in strings are not nesting
        ('{"k": "v"}', {"k": "v"}),  # str works too
        (bytearray(b"[]"), []),
    ],
)
def test_accepts_json(text: bytes | str, value: object) -> None:
    assert jsontext.loads(text) == value


def test_accepts_nesting_up_to_the_limit() -> None:
    value = jsontext.loads(nested(MAX_DEPTH))
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == []
    assert jsontext.loads('{"a":' * MAX_DEPTH + "1" + "}" * MAX_DEPTH) is not None


@pytest.mark.parametrize(
    "text",
    [
        nested(MAX_DEPTH + 1),
        '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1),
        nested(978),  # where CPython's own decoder gave a RecursionError (a 500)
        nested(100_000),
        "[" * 1_000_000,  # unterminated, too
        "[" + nested(MAX_DEPTH, '{"k":[', "]}") + "]",
    ],
    ids=["limit+1", "objects", "978", "100k", "unterminated", "mixed"],
)
def test_refuses_deeper_nesting_with_a_typed_error(text: str) -> None:
    with pytest.raises(InvalidJSON, match="nested more than 512 levels"):
        jsontext.loads(text)


def test_deep_nesting_is_refused_even_when_the_stack_is_nearly_full() -> None:
    def at_depth(remaining: int) -> None:
        if remaining:
            return at_depth(remaining - 1)
        with pytest.raises(InvalidJSON):
            jsontext.loads(nested(MAX_DEPTH - 1))  # fine on its own; here the stack has no room for it

    at_depth(sys.getrecursionlimit() - 200)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"NaN", "NaN is not a valid JSON value"),
        (b'{"a": Infinity}', "Infinity is not a valid JSON value"),
        (b"[-Infinity]", "-Infinity is not a valid JSON value"),
        ('{"a":1}'.encode("utf-16"), "not valid UTF-8"),  # with a BOM
        ('{"a":1}'.encode("utf-16-le"), "Expecting"),  # without: NUL bytes are UTF-8, but not JSON
        ('{"a":1}'.encode("utf-16-be"), "Expecting"),
        ('{"a":1}'.encode("utf-32"), "not valid UTF-8"),
        ('{"a":1}'.encode("utf-32-le"), "Expecting"),
        ('{"a":1}'.encode("utf-32-be"), "Expecting"),
        ('{"a":1}'.encode("utf-8-sig"), "byte-order mark"),
        ("\ufeff{}", "byte-order mark"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b'"\xc3"', "not valid UTF-8"),
        (b"{not json", "Expecting property name"),
        (b"", "Expecting value"),
        (b'"tab\tinside"', "Invalid control character"),
        (b"[1,]", "Expecting value"),
        (b"{} {}", "Extra data"),
    ],
)
def test_refuses_what_lambda_refuses(data: bytes | str, reason: str) -> None:
    with pytest.raises(InvalidJSON, match=reason):
        jsontext.loads(data)
    # json.loads itself would accept several of these: that is why this module exists
    if data in (b"NaN", '{"a":1}'.encode("utf-16"), '{"a":1}'.encode("utf-32")):
        json.loads(data)


def test_invalid_json_is_a_value_error() -> None:
    assert issubclass(InvalidJSON, ValueError)


@pytest.mark.parametrize(
    ("text", "depth"),
    [("1", 0), ("[]", 1), ('{"a": [1, {"b": []}]}', 4), ('["]]]]", "\\"[[["]', 1), (nested(700), 700)],
)
def test_depth(text: str, depth: int) -> None:
    assert jsontext.depth(text) == depth


def test_a_number_too_long_for_python_is_invalid_not_a_crash() -> None:
    # Found by the control-plane fuzz suite: CPython raises a plain ValueError past 4,300 digits.
    with pytest.raises(jsontext.InvalidJSON, match="more than 4300 digits"):
        jsontext.loads('{"Timeout": ' + "1" * 4400 + "}")
    assert jsontext.loads("1" * 4300) == int("1" * 4300)

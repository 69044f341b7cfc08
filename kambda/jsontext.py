"""Strict JSON for everything a client sends us (pure).

Python's `json.loads` is more lenient than the JSON that Lambda accepts, and can fail in ways that are not a
parse error:

- given bytes, it guesses UTF-16 or UTF-32 from the first bytes; Lambda takes UTF-8 only, so bytes are decoded
  as strict UTF-8 here first. A UTF-8 byte-order mark is refused too (RFC 8259 forbids sending one, and Lambda's
  parser reports it as an unexpected character);
- it accepts `NaN`, `Infinity` and `-Infinity`, which are not JSON;
- nesting deeper than the interpreter's recursion limit (about 980 levels, less the caller's own stack) raises
  `RecursionError` rather than `ValueError`;
- an integer of more than 4,300 digits raises a plain `ValueError` (CPython's guard against quadratic int parsing):
  a Python runtime could not read it either, so it is refused as invalid like the rest.

`MAX_DEPTH` is the documented nesting limit: 512 levels. Real payloads are rarely more than a few dozen levels
deep; the limit only has to stay clear of CPython's own ~980 so that it is deterministic (it does not depend on how
deep the caller's stack happens to be) and so that whatever we accept, a Python runtime (awslambdaric decodes the
event with the same `json` module) can decode too.
"""

from __future__ import annotations

import json
import re
import sys
from itertools import accumulate
from typing import Any, NoReturn

MAX_DEPTH = 512

_BOM = "\ufeff"
# A JSON string literal (possessive, so a long or unterminated one costs one linear pass) and everything that is
# not a bracket: what is left after removing both is the nesting structure alone.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}


class InvalidJSON(ValueError):
    """The text is not strict JSON; the message says why, in words a caller can act on."""


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The value of one strict JSON text: UTF-8, no BOM, no NaN/Infinity, nested at most `max_depth` levels."""
    text = decode(data)
    if text.startswith(_BOM):
        raise InvalidJSON("a byte-order mark (U+FEFF) is not allowed before JSON text")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidJSON(_too_deep(max_depth)) from None
    except InvalidJSON:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidJSON(str(exc)) from None
    except ValueError:  # int() past sys.get_int_max_str_digits()
        raise InvalidJSON(f"a number has more than {sys.get_int_max_str_digits()} digits") from None
    # Only a text with more opening brackets than the limit can nest past it; counting them is cheap, so the
    # exact scan runs only for large payloads.
    if text.count("[") + text.count("{") > max_depth and depth(text) > max_depth:
        raise InvalidJSON(_too_deep(max_depth))
    return value


def decode(data: bytes | bytearray | str) -> str:
    """Bytes as strict UTF-8 text (never UTF-16/32, never with replacement characters)."""
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"the text is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None


def depth(text: str) -> int:
    """How deeply the arrays and objects of a (syntactically valid) JSON text nest; 0 for a scalar."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_DELTA.__getitem__, brackets)), default=0)


def _refuse_constant(name: str) -> NoReturn:
    raise InvalidJSON(f"{name} is not a valid JSON value")


def _too_deep(max_depth: int) -> str:
    return f"arrays and objects are nested more than {max_depth} levels deep"

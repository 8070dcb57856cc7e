"""The numbers a request may carry, one rule for HTTP bodies and MCP tool arguments alike.

The engine keeps a JSON number as a 64-bit integer or a finite double (orjson's types, and so the
log's). An integer outside -2^63 … 2^64-1 would be read as a float and rounded, silently; a number
past a double's range (1e400) as infinity, and NaN or Infinity (not JSON, but some encoders write
them) would be stored as null. Each is refused instead, with the field it is in: an HTTP body is
checked on its bytes (`check_body`, before the route parses it; `locate` for a body orjson
refused), MCP tool arguments as the values the SDK parsed (`find`). The answer is the same
`ValidationFailed` either way; only NaN or Infinity written out in an HTTP body is `NotJson`
(400), since that body is not JSON at all.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from engine.errors import NotJson, ValidationFailed

INT_RANGE = (-(2**63), 2**64 - 1)
# JSON integers have no leading zeros, so one of more digits than 2^64-1 (20) is out of range:
# decided without int(), which refuses texts of over 4,300 digits.
_MAX_DIGITS = len(str(INT_RANGE[1]))
# Every integer outside the range has at least 19 digits. A body's shape (engine: translate, then
# find, both in C) shows its digits as 9, points and exponents as ".", the rest as spaces; an
# integer of 19 digits or more is " 999…" not followed by a point. Floats do not count: a client's
# embedding sends hundreds with 17 to 20 digits after the point, and the regex this replaced
# (any 19 digits) sent those bodies to the second, Python parse, and a regex that skips floats
# costs far more than the shape
# (benchmarks/RESULTS.md#3-the-exact-integer-check-no-longer-parses-float-bodies-twice-6f60200).
_SHAPE = bytes(57 if chr(b).isdigit() and b < 128 else 46 if b in b".eE" else 32 for b in range(256))
_LONG_INTEGER = b" " + b"9" * 19

INTEGER_MESSAGE = "integer does not fit in 64 bits (-2^63 to 2^64-1)"
NOT_FINITE_MESSAGE = "number is not finite: NaN, Infinity and numbers past ±1.8e308 cannot be stored"
_HINT = (
    "Send integers this large, and values that are not finite numbers, as strings; the engine keeps "
    "numbers as 64-bit integers or finite doubles, and never rounds one silently."
)


class _Integer:
    """An integer literal out of range, as the body's parse found it (int() may not take it)."""


class _Literal:
    """NaN, Infinity or -Infinity written out: not JSON."""


@dataclass(frozen=True, slots=True)
class BadNumber:
    field: str  # a dotted path ("context.n", "messages.0.content"); "body" for the body itself
    integer: bool  # an integer past 64 bits; else a number that is not finite
    literal: bool = False  # NaN or Infinity written out in a body's text

    def error(self) -> ValidationFailed:
        message = INTEGER_MESSAGE if self.integer else NOT_FINITE_MESSAGE
        details: dict[str, Any] = {"field": self.field}
        if self.integer:
            details["limit"] = "-2^63 to 2^64-1"
        details["errors"] = [{"field": self.field, "message": message}]
        if self.literal:
            return NotJson(f"request body is not valid JSON: {self.field}: {message}", details, _HINT)
        return ValidationFailed(f"{self.field}: {message}", details, _HINT)


def check_body(body: bytes) -> None:
    """Raises for an integer the engine cannot keep exactly. Only a body with an integer of 19
    digits or more can hold one; only those are parsed a second time. (A match may be inside a
    string: that only costs the second parse.) A number past a double's range, or NaN, makes the
    route's own parse fail, and its error is `locate`d then."""
    if has_long_integer(body):
        bad = locate(body)
        if bad is not None:
            raise bad.error()


def locate(body: bytes | str) -> BadNumber | None:
    """The first number of a body, in document order, that the engine cannot keep; None when there
    is none, or the body is not JSON for another reason (or deeper than Python's parser goes)."""
    try:
        value = json.loads(body, parse_int=_integer, parse_constant=_literal)
    except (ValueError, RecursionError):
        return None
    return find(value)


def find(value: Any, path: tuple[str, ...] = ()) -> BadNumber | None:
    """The first number in a parsed JSON value, depth first in order, that the engine cannot keep.
    Iterative: a value may nest as deep as its parser went."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            stack.extend((child, (*where, str(key))) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((child, (*where, str(i))) for i, child in reversed(list(enumerate(item))))
        elif (bad := _bad(item)) is not None:
            integer, literal = bad
            return BadNumber(".".join(where) or "body", integer, literal)
    return None


def _bad(item: Any) -> tuple[bool, bool] | None:
    """(integer, literal) for a number the engine cannot keep, else None."""
    if isinstance(item, _Integer):
        return True, False
    if isinstance(item, _Literal):
        return False, True
    if isinstance(item, float) and not math.isfinite(item):
        return False, False
    if isinstance(item, int) and not isinstance(item, bool) and not INT_RANGE[0] <= item <= INT_RANGE[1]:
        return True, False
    return None


def _integer(text: str) -> int | _Integer:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        return _Integer()
    value = int(text)
    return value if INT_RANGE[0] <= value <= INT_RANGE[1] else _Integer()


def _literal(text: str) -> _Literal:
    return _Literal()


def has_long_integer(body: bytes) -> bool:
    shape = b" " + body.translate(_SHAPE)
    start = shape.find(_LONG_INTEGER)
    while start != -1:
        end = start + len(_LONG_INTEGER)
        while end < len(shape) and shape[end] == 57:  # the rest of the run
            end += 1
        if end == len(shape) or shape[end] != 46:  # no point or exponent follows: an integer
            return True
        start = shape.find(_LONG_INTEGER, end)
    return False

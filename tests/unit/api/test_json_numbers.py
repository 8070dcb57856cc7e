"""The numbers a request may carry (api/json_numbers.py): the check on a body's bytes finds every
integer orjson would silently read as a float, whatever surrounds it, and leaves floats alone;
`locate` names the field of a number that made the body's parse fail, and `find` does the same for
values already parsed (an MCP tool's arguments), with the same error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.json_numbers import BadNumber, check_body, find, has_long_integer, locate
from engine.errors import NotJson, ValidationFailed

LOW, HIGH = -(2**63), 2**64 - 1

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)


def _integers(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [i for v in value for i in _integers(v)]
    if isinstance(value, dict):
        return [i for v in value.values() for i in _integers(v)]
    return []


@given(json_values, st.sampled_from([None, 0, 2]))
def test_every_integer_outside_64_bits_is_refused(value: Any, indent: int | None) -> None:
    body = json.dumps(value, indent=indent).encode()
    if any(not LOW <= i <= HIGH for i in _integers(value)):
        assert has_long_integer(body)
        with pytest.raises(ValidationFailed):
            check_body(body)
        assert find(value) is not None  # the parsed value (an MCP tool's) is refused alike
    else:
        check_body(body)  # never refused
        assert find(value) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"vector": [0.00012345678901234567, -0.1234567890123456789012, 12345678901234567890.5]}',
        b"[1234567890123456789e3, 1E1234567890123456789, 123456789012345678]",
    ],
)
def test_floats_with_long_runs_of_digits_are_not_parsed_again(body: bytes) -> None:
    assert not has_long_integer(body)


@pytest.mark.parametrize("digits", ["7" * 5000, "-" + "1" * 4301, "1" + "0" * 20])
def test_an_integer_of_any_length_is_refused_with_its_field(digits: str) -> None:
    # Python's int() refuses a text of over 4,300 digits; the check must not need it.
    with pytest.raises(ValidationFailed) as refused:
        check_body(b'{"context": {"list": [1, %s]}}' % digits.encode())
    assert refused.value.details["field"] == "context.list.1" and not isinstance(refused.value, NotJson)


@pytest.mark.parametrize(
    ("text", "literal"),
    [("NaN", True), ("Infinity", True), ("-Infinity", True), ("1e400", False), ("-1.5E999", False)],
)
def test_a_number_that_is_not_finite_is_located(text: str, literal: bool) -> None:
    bad = locate(b'{"a": 1, "b": [{"c": %s}]}' % text.encode())
    assert bad == BadNumber("b.0.c", integer=False, literal=literal)
    error = bad.error()
    assert isinstance(error, NotJson) == literal  # NaN and Infinity are not JSON at all: 400
    assert error.details == {
        "field": "b.0.c",
        "errors": [{"field": "b.0.c", "message": error.details["errors"][0]["message"]}],
    }


def test_locate_names_the_first_bad_number_in_document_order() -> None:
    assert locate(b'{"z": [1, 1e999], "a": %d}' % 2**64) == BadNumber("z.1", integer=False)
    assert locate(b"NaN") == BadNumber("body", integer=False, literal=True)


def test_locate_leaves_a_body_that_is_not_json_for_another_reason() -> None:
    assert locate(b'{"a": NaN') is None
    assert locate(b'{"a": 1}') is None
    assert locate(b"[" * 100_000) is None  # deeper than Python's parser goes


def test_find_refuses_parsed_values_as_check_body_refuses_their_text() -> None:
    value = {"keep": [True, 1.5, HIGH, LOW], "n": [{"m": float("nan")}], "big": 10**30}
    assert find(value) == BadNumber("n.0.m", integer=False)
    assert find({"big": -(2**63) - 1}, ("context",)) == BadNumber("context.big", integer=True)
    parsed, text = find({"big": 10**30}), locate(json.dumps({"big": 10**30}))
    assert parsed is not None and parsed == text
    assert parsed.error().details == {
        "field": "big",
        "limit": "-2^63 to 2^64-1",
        "errors": [{"field": "big", "message": "integer does not fit in 64 bits (-2^63 to 2^64-1)"}],
    }

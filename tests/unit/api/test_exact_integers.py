"""The gateway's check for integers orjson would silently read as floats (api/http.py): it finds
every one, whatever surrounds it, and leaves floats alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.http import _has_long_integer, check_exact_integers
from engine.errors import ValidationFailed

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
        assert _has_long_integer(body)
        with pytest.raises(ValidationFailed):
            check_exact_integers(body)
    else:
        check_exact_integers(body)  # never refused


@pytest.mark.parametrize(
    "body",
    [
        b'{"vector": [0.00012345678901234567, -0.1234567890123456789012, 12345678901234567890.5]}',
        b"[1234567890123456789e3, 1E1234567890123456789, 123456789012345678]",
    ],
)
def test_floats_with_long_runs_of_digits_are_not_parsed_again(body: bytes) -> None:
    assert not _has_long_integer(body)

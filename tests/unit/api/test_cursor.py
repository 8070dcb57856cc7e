"""List cursors (api/cursor.py): what a page gives back is read back exactly, and anything else is
a 422, never a 500 or a page of another place."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.cursor import decode_cursor, encode_cursor
from engine.errors import ValidationFailed
from engine.sessions.session import new_session_id

session_ids = st.builds(lambda _: new_session_id(), st.integers())


@given(created_at=st.integers(-(2**53), 2**53), session_id=session_ids)
def test_a_cursor_reads_back_as_the_key_it_was_made_from(created_at: int, session_id: str) -> None:
    cursor = encode_cursor((created_at, session_id))
    assert "=" not in cursor and decode_cursor(cursor) == (created_at, session_id)


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "not base64 at all",
        _b64([1]),
        _b64(["1", new_session_id()]),
        _b64([1.5, new_session_id()]),
        _b64([1, "sess_short"]),
        _b64({"created_at": 1, "id": new_session_id()}),
        _b64([1, new_session_id(), "extra"]),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_anything_else_is_a_validation_error_naming_the_field(cursor: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        decode_cursor(cursor)
    assert info.value.details == {"field": "cursor"} and info.value.hint


@given(st.text(max_size=64))
def test_no_string_breaks_the_decoder(cursor: str) -> None:
    try:
        created_at, session_id = decode_cursor(cursor)
    except ValidationFailed:
        return
    assert isinstance(created_at, int) and session_id.startswith("sess_")

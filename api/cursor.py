"""Opaque list cursors: the (created_at, id) of the last session of a page, base64url-encoded."""

from __future__ import annotations

import base64

import orjson

from engine.errors import ValidationFailed
from engine.sessions.session import is_session_id


def encode_cursor(key: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([key[0], key[1]])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        created_at, session_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(created_at, int) and isinstance(session_id, str) and is_session_id(session_id):
            return (created_at, session_id)
    except (ValueError, TypeError):
        pass
    raise ValidationFailed(
        "cursor is not valid",
        {"field": "cursor"},
        "Pass the next_cursor of the previous page unchanged, or leave cursor out for the first page.",
    )

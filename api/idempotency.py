"""The gateway's half of idempotency keys (engine/idempotency.py has the stores' half): read and
check the `Idempotency-Key` header, and fingerprint the request it came with."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from starlette.requests import Request

from engine.errors import ValidationFailed
from engine.idempotency import MAX_KEY_CHARS, Replayed

HEADER = "idempotency-key"
REPLAYED_HEADERS = {"Idempotent-Replayed": "true"}


def answered(result: Any) -> tuple[Any, dict[str, str]]:
    """A store's result, unwrapped when it is an earlier run's answer, and the headers saying so."""
    if isinstance(result, Replayed):
        return result.value, REPLAYED_HEADERS
    return result, {}


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_CHARS or not (key.isascii() and key.isprintable()):
        raise ValidationFailed(
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
            {"field": "Idempotency-Key", "max_chars": MAX_KEY_CHARS},
            "Send a new unique key (a UUID, say) with each write, and the same key when you retry it.",
        )
    return key


async def fingerprint(request: Request) -> str:
    """What makes two requests the same: method, path, If-Match and the body as JSON, so a retry
    that serializes the same body with other spacing or key order is still the same request."""
    body = await request.body()  # already read and kept by the route's body parsing
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS) if body else b""
    except orjson.JSONDecodeError:
        canonical = body
    digest = hashlib.blake2b(digest_size=16)
    for part in (
        request.method.encode(),
        request.url.path.encode(),
        request.headers.get("if-match", "").encode(),
    ):
        digest.update(part)
        digest.update(b"\0")
    digest.update(canonical)
    return digest.hexdigest()

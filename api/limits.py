"""Checks of request bodies against the configured limits (the schema cannot know them)."""

from __future__ import annotations

from typing import Any

import orjson

from engine.config import LimitsConfig
from engine.errors import PayloadTooLarge, ValidationFailed
from engine.sessions.session import NewMessage

from .schemas import MessageIn


def check_name(name: str, limits: LimitsConfig) -> str:
    if len(name) > limits.max_name_chars:
        raise ValidationFailed(
            f"name: at most {limits.max_name_chars} characters",
            {"field": "name", "limit": limits.max_name_chars},
        )
    return name


def check_ttl(ttl_s: int, limits: LimitsConfig) -> int:
    if ttl_s > limits.max_ttl_s:
        raise ValidationFailed(
            f"ttl_seconds: at most {limits.max_ttl_s}", {"field": "ttl_seconds", "limit": limits.max_ttl_s}
        )
    return ttl_s


def check_context(context: dict[str, Any], limits: LimitsConfig) -> dict[str, Any]:
    size = len(orjson.dumps(context))
    if size > limits.max_context_bytes:
        raise PayloadTooLarge(
            f"context is {size} bytes of JSON; the limit is {limits.max_context_bytes}",
            {"field": "context", "size_bytes": size, "limit_bytes": limits.max_context_bytes},
        )
    return context


def check_messages(messages: list[MessageIn], limits: LimitsConfig) -> tuple[NewMessage, ...]:
    if len(messages) > limits.max_batch_messages:
        raise ValidationFailed(
            f"messages: at most {limits.max_batch_messages} per request, got {len(messages)}",
            {"field": "messages", "limit": limits.max_batch_messages, "count": len(messages)},
            "Split the batch into several requests.",
        )
    for i, m in enumerate(messages):
        # Cheap character bound first; encode only when the content could be over the byte limit.
        if (
            len(m.content) * 4 > limits.max_message_bytes
            and len(m.content.encode()) > limits.max_message_bytes
        ):
            raise PayloadTooLarge(
                f"messages.{i}.content is over {limits.max_message_bytes} bytes",
                {"field": f"messages.{i}.content", "limit_bytes": limits.max_message_bytes},
            )
    return tuple(NewMessage(m.role, m.content, m.tool_call_id, m.tool_name) for m in messages)

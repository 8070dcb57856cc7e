"""Checks of what a client sends against the configured limits, wherever it comes in: a request
body (api/limits.py adds the request-only ones) or an import's line (engine.transfer)."""

from __future__ import annotations

import re
from typing import Any

import orjson

from engine.config import LimitsConfig, MemoryConfig
from engine.errors import Forbidden, PayloadTooLarge, ValidationFailed
from engine.memory.sessions import SESSION_MEMORY


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


def json_depth_over(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests containers deeper than `limit` ({} is 1, {"a": []} 2)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def check_json_depth(value: Any, field: str, limit: int) -> None:
    if json_depth_over(value, limit):
        raise ValidationFailed(
            f"{field}: JSON nested deeper than {limit} levels",
            {"field": field, "limit": limit},
            "Flatten the value (limits.max_json_depth is the most nesting the engine stores; {} is 1).",
        )


def check_context(context: dict[str, Any], limits: LimitsConfig) -> dict[str, Any]:
    check_json_depth(context, "context", limits.max_json_depth)
    size = len(orjson.dumps(context))
    if size > limits.max_context_bytes:
        raise PayloadTooLarge(
            f"context is {size} bytes of JSON; the limit is {limits.max_context_bytes}",
            {"field": "context", "size_bytes": size, "limit_bytes": limits.max_context_bytes},
        )
    return context


def check_writable_namespace(namespace: str) -> str:
    if namespace == SESSION_MEMORY:
        raise Forbidden(
            f"namespace {SESSION_MEMORY!r} is written by the engine only",
            {"namespace": namespace},
            "Closing a session writes its summary there and deleting the session removes it; "
            "query it freely, and keep your own vectors in another namespace.",
        )
    return namespace


def check_dimension(values: list[float] | None, field: str, limits: MemoryConfig) -> None:
    if values is not None and len(values) > limits.max_dimension:
        raise ValidationFailed(
            f"{field}: at most {limits.max_dimension} dimensions",
            {"field": field, "limit": limits.max_dimension, "dimension": len(values)},
        )


def check_vector(
    external_id: str,
    text: str | None,
    values: list[float] | None,
    metadata: dict[str, Any] | None,
    field: str,
    limits: MemoryConfig,
    max_json_depth: int,
) -> dict[str, Any]:
    """A vector's metadata (default {}), after checking its sizes; `field` names it in a refusal
    (`vectors.3` in a request, the line in an import)."""
    if not external_id or "\x00" in external_id:  # a request's schema refuses these first
        raise ValidationFailed(f"{field}.id: a non-empty id without NUL", {"field": f"{field}.id"})
    if len(external_id) > limits.max_id_chars:
        raise ValidationFailed(
            f"{field}.id: at most {limits.max_id_chars} characters",
            {"field": f"{field}.id", "limit": limits.max_id_chars},
        )
    if text is not None and not text.strip():  # a request's schema refuses it first
        raise ValidationFailed(
            f"{field}.text: must not be empty or only whitespace", {"field": f"{field}.text"}
        )
    if values is not None and not values:  # a request's schema refuses it first
        raise ValidationFailed(f"{field}.values: must not be empty", {"field": f"{field}.values"})
    if text is not None and len(text) > limits.max_text_chars:
        raise PayloadTooLarge(
            f"{field}.text: at most {limits.max_text_chars} characters",
            {"field": f"{field}.text", "limit": limits.max_text_chars},
        )
    check_dimension(values, f"{field}.values", limits)
    metadata = metadata or {}
    check_json_depth(metadata, f"{field}.metadata", max_json_depth)
    size = len(orjson.dumps(metadata))
    if size > limits.max_metadata_bytes:
        raise PayloadTooLarge(
            f"{field}.metadata is {size} bytes of JSON; the limit is {limits.max_metadata_bytes}",
            {"field": f"{field}.metadata", "size_bytes": size, "limit_bytes": limits.max_metadata_bytes},
        )
    return metadata


# A namespace's name, as the API's schema takes it (api.schemas.Namespace).
NAMESPACE_MAX_CHARS = 64
NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
_NAMESPACE = re.compile(NAMESPACE_PATTERN)


def reserved_namespace(namespace: str) -> bool:
    """Names a person would read as the engine's own namespace are reserved, so no vectors of a
    client's can pass for the engine's."""
    return namespace != SESSION_MEMORY and namespace.lower().replace("_", "-") == SESSION_MEMORY


def check_namespace(namespace: str) -> str:
    """A namespace named outside a request's schema (an import's line): its name as the schema
    takes it, and one a client may write."""
    if not 0 < len(namespace) <= NAMESPACE_MAX_CHARS or not _NAMESPACE.match(namespace):
        raise ValidationFailed(
            f"namespace {namespace[:80]!r}: 1 to {NAMESPACE_MAX_CHARS} letters, digits, and _ . : -",
            {"field": "namespace"},
        )
    if reserved_namespace(namespace):
        raise ValidationFailed(
            f"namespace {namespace!r} is reserved: it differs from {SESSION_MEMORY!r} only by case or _",
            {"field": "namespace"},
        )
    return check_writable_namespace(namespace)

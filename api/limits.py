"""Checks of request bodies against the configured limits (the schema cannot know them); those an
import's lines are held to as well live in engine.limits, and are named here too."""

from __future__ import annotations

from typing import Any

from engine.config import LimitsConfig, MemoryConfig
from engine.errors import PayloadTooLarge, ValidationFailed
from engine.limits import check_context as check_context
from engine.limits import check_dimension as check_dimension
from engine.limits import check_json_depth as check_json_depth
from engine.limits import check_name as check_name
from engine.limits import check_ttl as check_ttl
from engine.limits import check_vector
from engine.limits import check_writable_namespace as check_writable_namespace
from engine.limits import json_depth_over as json_depth_over
from engine.memory.index import OPERATORS
from engine.memory.sessions import FILTER_KEYS, SESSION_MEMORY
from engine.sessions.session import NewMessage, SessionStatus

from .schemas import MessageIn, VectorIn


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


def check_vector_request(count: int, limits: MemoryConfig) -> None:
    if count > limits.max_vectors_per_request:
        raise ValidationFailed(
            f"vectors: at most {limits.max_vectors_per_request} per request, got {count}",
            {"field": "vectors", "limit": limits.max_vectors_per_request, "count": count},
            "Split the upsert into several requests.",
        )


def check_vector_fields(v: VectorIn, i: int, limits: MemoryConfig, max_json_depth: int) -> dict[str, Any]:
    """The vector's metadata (default {}), after checking its sizes."""
    return check_vector(v.id, v.text, v.values, v.metadata, f"vectors.{i}", limits, max_json_depth)


def check_top_k(top_k: int | None, limits: MemoryConfig) -> int:
    if top_k is None:
        return limits.default_top_k
    if top_k > limits.max_top_k:
        raise ValidationFailed(
            f"top_k: at most {limits.max_top_k}", {"field": "top_k", "limit": limits.max_top_k}
        )
    return top_k


MAX_IN_VALUES = 1000


def check_query_text(text: str | None, limits: MemoryConfig) -> None:
    if text is not None and len(text) > limits.max_text_chars:
        raise PayloadTooLarge(
            f"query_text: at most {limits.max_text_chars} characters",
            {"field": "query_text", "limit": limits.max_text_chars, "length": len(text)},
            "Query with the words that matter: a sentence or a paragraph, not a document.",
        )


AS_OF_SKEW_MS = 60_000  # how far past the gateway's clock an as_of may be: clocks of callers drift


def check_as_of(as_of: int | None, now_ms: int) -> int | None:
    """A session-memory query's moment (epoch ms): not before 1970, not in the future."""
    if as_of is None:
        return None
    if as_of < 0:
        raise ValidationFailed(
            f"as_of: epoch milliseconds, not negative; got {as_of}",
            {"field": "as_of", "as_of": as_of},
            _AS_OF_HINT,
        )
    if as_of > now_ms + AS_OF_SKEW_MS:
        raise ValidationFailed(
            f"as_of: {as_of} is in the future (now is {now_ms})",
            {"field": "as_of", "as_of": as_of, "now": now_ms, "allowed_skew_ms": AS_OF_SKEW_MS},
            _AS_OF_HINT + " Leave it out to search memory as it is now.",
        )
    return as_of


_AS_OF_HINT = (
    "as_of is a moment in epoch milliseconds, such as 1767225600000 (2026-01-01T00:00:00Z), at "
    f"most {AS_OF_SKEW_MS // 1000} seconds past the server's clock."
)


def check_filter(where: dict[str, Any] | None, namespace: str) -> dict[str, Any] | None:
    """A query's filter, its operators and (in session-memory) its keys checked."""
    if not where:
        return None
    for key, condition in where.items():
        field = f"filter.{key}"
        if namespace == SESSION_MEMORY and key not in FILTER_KEYS:
            raise ValidationFailed(
                f"{field}: session-memory is filtered on {', '.join(sorted(FILTER_KEYS))}",
                {"field": field, "allowed": sorted(FILTER_KEYS)},
                "Filter prior sessions by their name, id, message count, status, or a time range on "
                'created_at or closed_at, such as {"closed_at": {"$gte": 1700000000000}}.',
            )
        if namespace == SESSION_MEMORY and key == "status":
            _check_status(condition)
        if not isinstance(condition, dict):
            continue
        if not condition:
            raise ValidationFailed(f"{field}: an empty condition", {"field": field}, _OPERATOR_HINT)
        for name, operand in condition.items():
            if name not in OPERATORS:
                raise ValidationFailed(
                    f"{field}: unknown operator {name!r}",
                    {"field": field, "operator": name, "allowed": list(OPERATORS)},
                    _OPERATOR_HINT,
                )
            if (name == "$in") != isinstance(operand, list):
                what = "a list of values" if name == "$in" else "one value"
                raise ValidationFailed(
                    f"{field}.{name}: takes {what}", {"field": f"{field}.{name}"}, _OPERATOR_HINT
                )
            if name == "$in" and len(operand) > MAX_IN_VALUES:
                raise ValidationFailed(
                    f"{field}.$in: at most {MAX_IN_VALUES} values",
                    {"field": f"{field}.$in", "limit": MAX_IN_VALUES},
                )
            if name in ("$gt", "$gte", "$lt", "$lte") and (
                isinstance(operand, bool) or not isinstance(operand, int | float | str)
            ):
                raise ValidationFailed(
                    f"{field}.{name}: compares with a number or a string",
                    {"field": f"{field}.{name}"},
                    _OPERATOR_HINT,
                )
    return where


STATUSES = tuple(status.value for status in SessionStatus)
_STATUS_OPERATORS = ("$eq", "$ne", "$in")


def _check_status(condition: Any) -> None:
    """A session-memory status filter: a value or $eq, $ne, $in of SessionStatus values."""
    hint = (
        f"A session's status is one of {', '.join(STATUSES)}; filter with a value or "
        f'{", ".join(_STATUS_OPERATORS)}, such as {{"status": "closed"}} or '
        '{"status": {"$in": ["active", "closed"]}}.'
    )
    if isinstance(condition, list):  # equality with a list would hold for no session
        raise ValidationFailed(
            'filter.status: one status; several go in {"$in": [...]}', {"field": "filter.status"}, hint
        )
    conditions = condition if isinstance(condition, dict) else {"$eq": condition}
    for name, operand in conditions.items():
        if name not in _STATUS_OPERATORS:
            raise ValidationFailed(
                f"filter.status: takes {', '.join(_STATUS_OPERATORS)}, not {name!r}",
                {"field": "filter.status", "operator": name, "allowed": list(_STATUS_OPERATORS)},
                hint,
            )
        if (name == "$in") != isinstance(operand, list):
            what = "a list of statuses" if name == "$in" else 'one status (several go in {"$in": [...]})'
            raise ValidationFailed(
                f"filter.status.{name}: takes {what}", {"field": f"filter.status.{name}"}, hint
            )
        unknown = [v for v in (operand if isinstance(operand, list) else [operand]) if v not in STATUSES]
        if unknown:
            raise ValidationFailed(
                f"filter.status: unknown status {unknown[0]!r}",
                {"field": "filter.status", "value": unknown[0], "allowed": list(STATUSES)},
                hint,
            )


_OPERATOR_HINT = (
    'A filter value means equality; an object holds operators, e.g. {"closed_at": {"$gte": 1700000000000, '
    '"$lt": 1800000000000}} or {"name": {"$in": ["a", "b"]}}. Operators: ' + ", ".join(OPERATORS) + "."
)


def check_delete_ids(ids: list[str], limits: MemoryConfig) -> tuple[str, ...]:
    if len(ids) > limits.max_ids_per_delete:
        raise ValidationFailed(
            f"ids: at most {limits.max_ids_per_delete} per request, got {len(ids)}",
            {"field": "ids", "limit": limits.max_ids_per_delete, "count": len(ids)},
        )
    return tuple(ids)

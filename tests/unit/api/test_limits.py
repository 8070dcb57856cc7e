"""The configured limits on request bodies (api/limits.py): each is enforced at its edge, with the
field and the limit in the error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.limits import (
    MAX_IN_VALUES,
    check_context,
    check_filter,
    check_messages,
    check_name,
    check_top_k,
    check_ttl,
    check_writable_namespace,
    json_depth_over,
)
from api.schemas import MessageIn
from engine.config import LimitsConfig, MemoryConfig
from engine.errors import Forbidden, PayloadTooLarge, ValidationFailed

LIMITS = LimitsConfig(max_message_bytes=1024, max_context_bytes=2048, max_batch_messages=3, max_name_chars=5)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=20,
)


def depth(value: Any) -> int:
    """The nesting of containers, by plain recursion: {} is 1, {"a": []} is 2, a scalar 0."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


@given(value=json_values, limit=st.integers(0, 6))
def test_the_depth_check_agrees_with_plain_recursion(value: Any, limit: int) -> None:
    assert json_depth_over(value, limit) == (depth(value) > limit)


def test_names_and_ttls_stop_at_their_limits() -> None:
    assert check_name("abcde", LIMITS) == "abcde"
    with pytest.raises(ValidationFailed) as info:
        check_name("abcdef", LIMITS)
    assert info.value.details == {"field": "name", "limit": 5}
    assert check_ttl(LIMITS.max_ttl_s, LIMITS) == LIMITS.max_ttl_s
    with pytest.raises(ValidationFailed):
        check_ttl(LIMITS.max_ttl_s + 1, LIMITS)


def test_a_context_is_measured_as_the_json_it_is_stored_as() -> None:
    fits = {"k": "x" * (2048 - len('{"k":""}'))}
    assert check_context(fits, LIMITS) is fits
    with pytest.raises(PayloadTooLarge) as info:
        check_context({"k": "x" * 2048}, LIMITS)
    assert info.value.details["limit_bytes"] == 2048


@pytest.mark.parametrize("char", ["a", "é", "€", "😀"])  # 1 to 4 bytes each in UTF-8
def test_a_message_is_limited_in_bytes_whatever_its_characters(char: str) -> None:
    fits = char * (1024 // len(char.encode()))
    assert check_messages([MessageIn(role="user", content=fits)], LIMITS)[0].content == fits
    with pytest.raises(PayloadTooLarge) as info:
        check_messages([MessageIn(role="user", content=fits + "a" * len(char.encode()))], LIMITS)
    assert info.value.details == {"field": "messages.0.content", "limit_bytes": 1024}


def test_a_batch_is_limited_in_count() -> None:
    batch = [MessageIn(role="user", content="m")] * 4
    with pytest.raises(ValidationFailed) as info:
        check_messages(batch, LIMITS)
    assert info.value.details == {"field": "messages", "limit": 3, "count": 4}


def test_top_k_has_a_default_and_a_maximum() -> None:
    memory = MemoryConfig()
    assert check_top_k(None, memory) == memory.default_top_k
    assert check_top_k(memory.max_top_k, memory) == memory.max_top_k
    with pytest.raises(ValidationFailed):
        check_top_k(memory.max_top_k + 1, memory)


def test_session_memory_is_written_by_the_engine_only() -> None:
    assert check_writable_namespace("notes") == "notes"
    with pytest.raises(Forbidden):
        check_writable_namespace("session-memory")


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ({"year": {}}, "filter.year"),
        ({"year": {"$near": 1}}, "filter.year"),
        ({"year": {"$in": 1}}, "filter.year.$in"),
        ({"year": {"$eq": [1, 2]}}, "filter.year.$eq"),
        ({"year": {"$gt": True}}, "filter.year.$gt"),
        ({"year": {"$lt": None}}, "filter.year.$lt"),
        ({"year": {"$in": list(range(MAX_IN_VALUES + 1))}}, "filter.year.$in"),
    ],
)
def test_a_filter_that_cannot_mean_anything_is_refused_naming_its_field(
    where: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationFailed) as info:
        check_filter(where, "notes")
    assert info.value.details["field"] == field and info.value.hint


def test_session_memory_is_filtered_on_its_own_keys_only() -> None:
    assert check_filter({"closed_at": {"$gte": 1, "$lt": 2}}, "session-memory")
    with pytest.raises(ValidationFailed) as info:
        check_filter({"color": "red"}, "session-memory")
    assert "allowed" in info.value.details
    assert check_filter({"color": "red"}, "notes") == {"color": "red"}
    assert check_filter({}, "notes") is None


@pytest.mark.parametrize(
    ("status", "field"),
    [
        (["closed", "completed"], "filter.status"),
        ({"$eq": ["closed"]}, "filter.status.$eq"),
        ({"$ne": ["closed"]}, "filter.status.$ne"),
        ({"$in": "closed"}, "filter.status.$in"),
        ({"$in": ["closed", "archived"]}, "filter.status"),
        ({"$gt": "closed"}, "filter.status"),
    ],
)
def test_a_status_filter_that_would_match_nothing_is_refused_with_a_hint(status: Any, field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        check_filter({"status": status}, "session-memory")
    assert info.value.details["field"] == field
    assert info.value.hint is not None and '{"status": {"$in": ["active", "closed"]}}' in info.value.hint


def test_a_status_filter_takes_one_status_or_a_list_in_in() -> None:
    for status in ("closed", {"$eq": "closed"}, {"$ne": "active"}, {"$in": ["closed", "expired"]}):
        assert check_filter({"status": status}, "session-memory") == {"status": status}

from __future__ import annotations

import pickle

import pytest

from engine.errors import SessionNotActive, VersionMismatch
from engine.sessions.session import (
    TRANSITIONS,
    NewMessage,
    Session,
    SessionStatus,
    is_session_id,
    new_session_id,
)

NOW = 1_000_000


def make_session(ttl_s: int = 60) -> Session:
    return Session(
        org="acme",
        id=new_session_id(),
        name="s",
        ttl_s=ttl_s,
        created_at=NOW,
        expires_at=NOW + ttl_s * 1000,
        context={},
    )


def test_session_ids_carry_128_random_bits_and_are_recognized() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_session_id(i) and len(i) == len("sess_") + 32 for i in ids)
    assert not is_session_id("sess_xyz")
    assert not is_session_id("sess_" + "G" * 32)


def test_only_active_sessions_can_change_state() -> None:
    assert TRANSITIONS[SessionStatus.ACTIVE] == {
        SessionStatus.CLOSED,
        SessionStatus.COMPLETED,
        SessionStatus.EXPIRED,
    }
    for ended in (SessionStatus.CLOSED, SessionStatus.COMPLETED, SessionStatus.EXPIRED):
        session = make_session()
        session.transition(ended, now_ms=NOW + 5)
        for target in SessionStatus:
            with pytest.raises(SessionNotActive):
                session.transition(target, now_ms=NOW + 6)


def test_closing_marks_the_summary_pending() -> None:
    session = make_session()
    session.transition(SessionStatus.CLOSED, now_ms=NOW + 5)
    view = session.view()
    assert (view["status"], view["summary_status"], view["ended_at"]) == ("closed", "pending", NOW + 5)


def test_an_expired_session_ended_at_its_deadline() -> None:
    session = make_session(ttl_s=1)
    session.transition(SessionStatus.EXPIRED, now_ms=NOW + 7_000)
    assert session.ended_at == NOW + 1_000


def test_appends_get_consecutive_seqs_from_one() -> None:
    session = make_session()
    first = session.append([NewMessage("user", "a")], now_ms=NOW)
    batch = session.append(
        [NewMessage("assistant", "b"), NewMessage("tool", "c", "call1", "search")], now_ms=NOW + 1
    )
    assert [m["seq"] for m in first + batch] == [1, 2, 3]
    assert batch[1] == {
        "seq": 3,
        "role": "tool",
        "content": "c",
        "created_at": NOW + 1,
        "tool_call_id": "call1",
        "tool_name": "search",
    }


def test_message_pages_follow_after_seq_and_limit() -> None:
    session = make_session()
    session.append([NewMessage("user", str(i)) for i in range(10)], now_ms=NOW)
    page = session.view_with_messages(3, 4)["messages"]
    assert [m["seq"] for m in page] == [4, 5, 6, 7]
    assert session.view_with_messages(10)["messages"] == []
    assert session.view_with_messages(50)["messages"] == []


def test_context_replacement_bumps_version_and_honours_if_match() -> None:
    session = make_session()
    session.replace_context({"a": 1}, if_match=None, now_ms=NOW)
    session.replace_context({"b": 2}, if_match=2, now_ms=NOW)
    assert (session.context, session.version) == ({"b": 2}, 3)
    with pytest.raises(VersionMismatch) as info:
        session.replace_context({"c": 3}, if_match=2, now_ms=NOW)
    assert info.value.details["current_version"] == 3
    assert session.context == {"b": 2}


def test_ttl_change_moves_the_deadline_from_now() -> None:
    session = make_session(ttl_s=60)
    session.update(name="renamed", ttl_s=120, now_ms=NOW + 10_000)
    assert (session.name, session.ttl_s, session.expires_at) == ("renamed", 120, NOW + 130_000)


def test_sessions_pickle_for_transport() -> None:
    session = make_session()
    session.append([NewMessage("user", "a")], now_ms=NOW)
    assert pickle.loads(pickle.dumps(session)).view_with_messages() == session.view_with_messages()

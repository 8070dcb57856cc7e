"""Forking a session: a new session from another's messages 1..at_seq, by one op on the source's
shard, that replay rebuilds from the source and a snapshot keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.errors import QuotaExceeded, SessionExists, SessionNotFound, ValidationFailed
from engine.idempotency import Idempotent, Replayed
from engine.routing import shard_for
from engine.sessions.codec import decode_op, decode_session, encode_op, encode_session
from engine.sessions.durable import DurableSessions
from engine.sessions.events import events_of
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    DeleteSession,
    EndSession,
    ForkSession,
    GetSession,
    ReplaceContext,
)
from engine.sessions.session import NewMessage, SessionStatus, fork_session_id, new_session_id
from engine.sessions.store import SessionStore
from tests.support.snapshots import snapshot_action

T0 = 1_700_000_000_000
CHUNKY = DurabilityConfig(snapshot_chunk_sessions=2, snapshot_chunk_messages=3)


def source(store: SessionStore, texts: int = 3, org: str = "acme") -> str:
    sid = new_session_id()
    store.apply(CreateSession(org, sid, "planner", 120, {"goal": "ship"}), T0)
    messages = [NewMessage("user", "m1"), NewMessage("assistant", "m2", "c1", "tracker")]
    messages += [NewMessage("tool", f"m{n}", "c1", "tracker") for n in range(3, texts + 1)]
    for i, m in enumerate(messages[:texts]):
        store.apply(AppendMessages(org, sid, (m,)), T0 + i + 1)
    return sid


def fork(store: SessionStore, sid: str, at_seq: int, now_ms: int = T0 + 100, **kw: Any) -> dict[str, Any]:
    view: dict[str, Any] = store.apply(ForkSession("acme", new_session_id(), sid, at_seq, **kw), now_ms)
    return view


@pytest.mark.parametrize("at_seq", [0, 1, 2, 3])
def test_a_fork_holds_the_sources_messages_up_to_at_seq_as_they_were(at_seq: int) -> None:
    store = SessionStore()
    sid = source(store)
    before = store.apply(GetSession("acme", sid), T0 + 50)
    view = fork(store, sid, at_seq)
    assert view["forked_from"] == {"session_id": sid, "seq": at_seq}
    assert (view["status"], view["message_count"], view["version"]) == ("active", at_seq, 1)
    assert (view["name"], view["ttl_seconds"], view["context"]) == ("planner", 120, {"goal": "ship"})
    assert (view["created_at"], view["expires_at"]) == (T0 + 100, T0 + 100 + 120_000)
    forked = store.apply(GetSession("acme", view["id"]), T0 + 100)
    assert forked["messages"] == before["messages"][:at_seq]  # seq, role, tool fields, created_at
    assert store.apply(GetSession("acme", sid), T0 + 100) == before, "the source is unchanged"
    assert before["forked_from"] is None


def test_a_fork_takes_the_name_ttl_and_context_it_is_given() -> None:
    store = SessionStore()
    sid = source(store)
    view = fork(store, sid, 2, name="branch", ttl_s=30, context={"try": 2})
    assert (view["name"], view["ttl_seconds"], view["context"]) == ("branch", 30, {"try": 2})
    assert view["expires_at"] == T0 + 100 + 30_000


def test_the_fork_shares_the_sources_message_objects() -> None:
    store = SessionStore()
    sid = source(store)
    view = fork(store, sid, 2)
    original, forked = store._sessions["acme", sid], store._sessions["acme", view["id"]]
    assert forked.messages is not original.messages
    assert all(a is b for a, b in zip(forked.messages, original.messages[:2], strict=True))


@pytest.mark.parametrize("ending", [SessionStatus.CLOSED, SessionStatus.COMPLETED, "expired"])
def test_an_ended_source_can_be_forked(ending: Any) -> None:
    store = SessionStore()
    sid = source(store)
    if ending == "expired":
        now = T0 + 121_000  # past its deadline: it reads as expired
    else:
        store.apply(EndSession("acme", sid, ending), T0 + 10)
        now = T0 + 100
    view = fork(store, sid, 3, now_ms=now)
    assert (view["status"], view["message_count"]) == ("active", 3)
    assert view["summary_status"] is None and view["index_status"] is None


@pytest.mark.parametrize("at_seq", [-1, 4, 10**6])
def test_at_seq_out_of_range_is_refused_naming_it(at_seq: int) -> None:
    store = SessionStore()
    sid = source(store)
    with pytest.raises(ValidationFailed) as refused:
        fork(store, sid, at_seq)
    assert refused.value.details["field"] == "at_seq"
    assert len(store) == 1 and store.take_journal()[-1] == AppendMessages(
        "acme", sid, (NewMessage("tool", "m3", "c1", "tracker"),)
    ), "nothing is made or logged"


def test_another_organizations_or_a_missing_session_is_not_found() -> None:
    store = SessionStore()
    sid = source(store)
    for org, source_id in (("evil", sid), ("acme", new_session_id())):
        with pytest.raises(SessionNotFound) as missing:
            store.apply(ForkSession(org, new_session_id(), source_id, 1), T0)
        assert missing.value.session_id == source_id


def test_a_fork_is_refused_over_the_quotas_and_onto_an_id_in_use() -> None:
    store = SessionStore()
    sid = source(store)
    with pytest.raises(QuotaExceeded):
        store.apply(ForkSession("acme", new_session_id(), sid, 1, max_active=1), T0)
    with pytest.raises(QuotaExceeded):
        store.apply(ForkSession("acme", new_session_id(), sid, 3, max_messages=2), T0)
    with pytest.raises(SessionExists):
        store.apply(ForkSession("acme", sid, sid, 1), T0)
    assert len(store) == 1


def test_a_retry_under_its_key_answers_the_first_fork() -> None:
    store = SessionStore()
    sid = source(store)
    op = Idempotent("k1", "fp", ForkSession("acme", new_session_id(), sid, 2))
    first = store.apply(op, T0 + 100)
    again = store.apply(op, T0 + 200)
    assert type(again) is Replayed and again.value == first
    assert len(store) == 2
    store.apply(DeleteSession("acme", first["id"]), T0 + 300)
    with pytest.raises(SessionNotFound):
        store.apply(op, T0 + 400)  # the fork is gone: a retry is told so, not made again


def test_a_fork_emits_what_a_create_emits() -> None:
    store = SessionStore()
    sid = source(store)
    op = ForkSession("acme", new_session_id(), sid, 1)
    view = store.apply(op, T0 + 100)
    (event,) = events_of(op, view, T0 + 100)
    assert (event.type, event.session_id, event.data) == ("session.created", op.session_id, {"session": view})


def test_the_log_holds_the_op_not_the_messages() -> None:
    op = ForkSession("acme", new_session_id(), new_session_id(), 7, context={"a": 1}, max_active=3)
    encoded = encode_op(op)
    assert b"fork" in encoded and b"max_active" not in encoded
    assert decode_op(orjson.loads(encoded)) == ForkSession(
        "acme", op.session_id, op.source_id, 7, context={"a": 1}
    )


def test_a_snapshot_without_forked_from_still_reads() -> None:
    store = SessionStore()
    sid = source(store)
    view = fork(store, sid, 2)
    encoded = encode_session(store._sessions["acme", view["id"]])
    assert decode_session(encoded).forked_from == (sid, 2)
    assert decode_session(encoded[:24]).forked_from is None  # as a snapshot before forks wrote it


@pytest.mark.parametrize("shards", [1, 2, 8])
def test_a_fork_id_lands_on_its_sources_shard_and_a_keyed_one_is_the_same_each_time(shards: int) -> None:
    sid = new_session_id()
    for key in (None, "k1", "k2"):
        fork_id = fork_session_id("acme", sid, shards, key)
        assert shard_for("acme", fork_id, shards) == shard_for("acme", sid, shards)
    assert fork_session_id("acme", sid, shards, "k1") == fork_session_id("acme", sid, shards, "k1")
    assert fork_session_id("acme", sid, shards, "k1") != fork_session_id(
        "acme", new_session_id(), shards, "k1"
    )


# -- durable: replay and snapshots --------------------------------------------------------------------


def open_shard(path: Path, clock: ManualClock) -> DurableSessions:
    return DurableSessions(path, CHUNKY, clock, lock_wait_s=0.2)


def state(shard: DurableSessions) -> dict[tuple[str, str], list[Any]]:
    return {key: encode_session(s) for key, s in shard.store._sessions.items()}


def test_a_fork_replayed_from_the_log_and_read_from_a_snapshot_is_the_same(tmp_path: Path) -> None:
    clock = ManualClock()
    shard = open_shard(tmp_path, clock)
    sid, fork_id = new_session_id(), new_session_id()
    shard.commit([CreateSession("acme", sid, "s", 600, {"k": 1})])
    shard.commit([AppendMessages("acme", sid, tuple(NewMessage("user", f"m{i}") for i in range(4)))])
    clock.advance(5)
    shard.commit([ForkSession("acme", fork_id, sid, 3, name="branch")])
    shard.commit([AppendMessages("acme", sid, (NewMessage("user", "later"),))])  # after the fork
    shard.commit([ReplaceContext("acme", sid, {"k": 2})])
    live = state(shard)
    shard.close(snapshot=False)
    replayed = open_shard(tmp_path, clock)
    assert replayed.recovery.records_replayed == 5
    assert state(replayed) == live
    assert replayed.store._sessions["acme", fork_id].forked_from == (sid, 3)
    replayed.close()  # a final snapshot: the next start reads it, not the log
    restarted = open_shard(tmp_path, clock)
    assert restarted.recovery.records_replayed == 0
    assert state(restarted) == live
    view = restarted.store.apply(GetSession("acme", fork_id), clock.now_ms())
    assert [m["content"] for m in view["messages"]] == ["m0", "m1", "m2"]
    assert view["forked_from"] == {"session_id": sid, "seq": 3}


steps = st.lists(
    st.one_of(
        st.tuples(st.just("say"), st.integers(0, 9), st.integers(1, 3)),
        st.tuples(st.just("fork"), st.integers(0, 9), st.integers(0, 12)),
        st.tuples(st.just("end"), st.integers(0, 9)),
        st.tuples(st.just("snapshot-begin")),
        st.tuples(st.just("snapshot-step")),
        st.tuples(st.just("snapshot-finish")),
        st.tuples(st.just("restart")),
    ),
    max_size=40,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_forks_and_their_sources_diverge_and_every_restart_rebuilds_them(
    tmp_path_factory: Any, script: list[tuple[Any, ...]]
) -> None:
    """Each session's messages are what a model of lists says: a fork copies its source's first
    at_seq, then each takes its own appends, through snapshots taken meanwhile and restarts."""
    path = tmp_path_factory.mktemp("shard")
    clock = ManualClock()
    shard = open_shard(path, clock)
    first = new_session_id()
    shard.commit([CreateSession("acme", first, "s", 3600, {})])
    model: dict[str, list[str]] = {first: []}
    for n, step in enumerate(script):
        kind = step[0]
        sid = list(model)[step[1] % len(model)] if len(step) > 1 else first
        clock.advance(1)
        if kind == "say":
            texts = [f"{n}-{i}" for i in range(step[2])]
            result = shard.commit([AppendMessages("acme", sid, tuple(NewMessage("user", t) for t in texts))])
            if isinstance(result[0], list):  # an ended session refuses
                model[sid] += texts
        elif kind == "fork":
            fork_id = new_session_id()
            (result,) = shard.commit([ForkSession("acme", fork_id, sid, step[2])])
            if step[2] <= len(model[sid]):
                assert result["forked_from"] == {"session_id": sid, "seq": step[2]}
                model[fork_id] = model[sid][: step[2]]
            else:
                assert isinstance(result, ValidationFailed)
        elif kind == "end":
            shard.commit([EndSession("acme", sid, SessionStatus.COMPLETED)])
        elif kind.startswith("snapshot-"):
            snapshot_action(shard, kind)
        else:
            before = state(shard)
            shard.close(snapshot=False)
            shard = open_shard(path, clock)
            assert state(shard) == before
    for sid, texts in model.items():
        view = shard.store.apply(GetSession("acme", sid), clock.now_ms())
        assert [m["content"] for m in view["messages"]] == texts
    live = state(shard)
    shard.close(snapshot=False)
    assert state(open_shard(path, clock)) == live

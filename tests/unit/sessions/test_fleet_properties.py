"""Property tests of the engine core under a fleet: clients whose writes interleave in
any order, share group-commit batches, retry blindly with their Idempotency-Keys (before and after
the first answer), while the shard snapshots and crashes. Whatever the interleaving:

- each session's seqs are gap-free and its messages are in the order they were acknowledged;
- a retry answers exactly what the first run answered, and nothing is stored twice;
- a restart (from snapshot + log) keeps every acknowledged write and every idempotency record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.errors import EngineError, IdempotencyConflict
from engine.idempotency import Idempotent, Replayed
from engine.sessions.codec import encode_session
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    DeleteSession,
    EndSession,
    GetSession,
    PurgeSessions,
    ReplaceContext,
)
from engine.sessions.session import NewMessage, SessionStatus, session_id_for_key
from tests.support.snapshots import snapshot_action

CONFIG = DurabilityConfig(snapshot_chunk_sessions=1, snapshot_chunk_messages=2)
SESSIONS = ["sess_" + f"{i:032x}" for i in range(2)]
CLIENTS = 3


def open_shard(path: Path, clock: ManualClock) -> DurableSessions:
    return DurableSessions(path, CONFIG, clock, lock_wait_s=0.2)


def append(client: int, n: int, session: int) -> Idempotent:
    text = f"c{client}-{n}"
    op = AppendMessages("acme", SESSIONS[session], (NewMessage("user", text),))
    return Idempotent(f"key-{text}", f"fp-{text}-{session}", op)


step = st.one_of(
    # A batch: several clients' writes (new ones, or retries of earlier ones) applied together.
    st.tuples(
        st.just("batch"),
        st.lists(
            st.tuples(st.integers(0, CLIENTS - 1), st.booleans(), st.integers(0, 1)), min_size=1, max_size=5
        ),
    ),
    st.tuples(st.just("context"), st.integers(0, 1), st.integers(0, 3)),
    st.tuples(st.just("snapshot-begin")),
    st.tuples(st.just("snapshot-step")),
    st.tuples(st.just("snapshot-finish")),
    st.tuples(st.just("crash")),
    st.tuples(st.just("tick"), st.integers(0, 5000)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(step, max_size=40))
def test_any_interleaving_of_retrying_clients_stores_each_write_once_in_acknowledged_order(
    tmp_path_factory: Any, script: list[Any]
) -> None:
    path = tmp_path_factory.mktemp("fleet")
    clock = ManualClock()
    shard = open_shard(path, clock)
    shard.commit([CreateSession("acme", sid, "s", 10**6, {}) for sid in SESSIONS])
    sent: list[list[tuple[Idempotent, int]]] = [[] for _ in range(CLIENTS)]  # per client: (op, session)
    first_answer: dict[str, Any] = {}  # key -> what its first acknowledged run answered
    acknowledged: dict[str, list[str]] = {sid: [] for sid in SESSIONS}  # texts, in the order acked
    versions: dict[str, int] = dict.fromkeys(SESSIONS, 1)

    for action in script:
        kind = action[0]
        if kind == "batch":
            ops = []
            for client, retry, session in action[1]:
                if retry and sent[client]:
                    ops.append(sent[client][session % len(sent[client])][0])
                else:
                    op = append(client, len(sent[client]), session)
                    sent[client].append((op, session))
                    ops.append(op)
            for op, result in zip(ops, shard.commit(ops), strict=True):
                assert not isinstance(result, EngineError), result
                value = result.value if isinstance(result, Replayed) else result
                if op.key in first_answer:
                    assert isinstance(result, Replayed) and value == first_answer[op.key]
                else:
                    assert not isinstance(result, Replayed)
                    first_answer[op.key] = value
                    acknowledged[op.op.session_id].append(op.op.messages[0].content)
        elif kind == "context":
            sid = SESSIONS[action[1]]
            # A racing conditional update: applies only at the version it read.
            guess = versions[sid] - action[2] % 2
            (result,) = shard.commit([ReplaceContext("acme", sid, {"v": action[2]}, guess)])
            if guess == versions[sid]:
                versions[sid] = result["version"]
            else:
                assert isinstance(result, EngineError) and result.code == "PRECONDITION_FAILED"
        elif kind.startswith("snapshot-"):
            snapshot_action(shard, kind)
        elif kind == "crash":
            shard.close(snapshot=False)  # the process dies: only what is on disk remains
            shard = open_shard(path, clock)
        elif kind == "tick":
            clock.advance(action[1])

        for sid in SESSIONS:
            messages = shard.store.apply(GetSession("acme", sid), clock.now_ms())["messages"]
            assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1)), "gap-free"
            assert [m["content"] for m in messages] == acknowledged[sid], "each once, in acked order"

    # Every key is still remembered after a last crash: a retry now is answered, not applied.
    shard.close(snapshot=False)
    shard = open_shard(path, clock)
    everything = [op for ops in sent for op, _ in ops if op.key in first_answer]
    for op, result in zip(everything, shard.commit(everything), strict=True):
        assert isinstance(result, Replayed) and result.value == first_answer[op.key]
    other = Idempotent(everything[0].key, "another request", everything[0].op) if everything else None
    if other is not None:
        (conflict,) = shard.commit([other])
        assert isinstance(conflict, IdempotencyConflict)
    shard.close(snapshot=False)


SMALL = DurabilityConfig(
    snapshot_chunk_sessions=1,
    snapshot_chunk_messages=2,
    idempotency_retention_s=2.0,  # ticks below pass it, so records lapse
    idempotency_max_records=4,  # and the oldest are pushed out
)
keyed_step = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 5)),
    st.tuples(st.just("say"), st.integers(0, 5), st.integers(0, 5)),
    st.tuples(st.just("delete"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("purge"), st.integers(0, 5)),
    st.tuples(st.just("snapshot-begin")),
    st.tuples(st.just("snapshot-finish")),
    st.tuples(st.just("crash")),
    st.tuples(st.just("tick"), st.integers(0, 1500)),
)


def records(shard: DurableSessions) -> list[Any]:
    return list(shard.store.idempotency)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(keyed_step, max_size=40))
def test_restarts_rebuild_the_idempotency_records_exactly_through_deletes_lapses_and_evictions(
    tmp_path_factory: Any, script: list[Any]
) -> None:
    """Keyed creates (ids from keys), appends, deletes and purges, with records that lapse and are
    pushed out: the state and the records after a crash are the ones before it."""
    path = tmp_path_factory.mktemp("keyed")
    clock = ManualClock()
    shard = DurableSessions(path, SMALL, clock, lock_wait_s=0.2)
    for action in script:
        kind = action[0]
        if kind in ("create", "say", "delete", "purge"):
            shard.commit(keyed_ops(action))
        elif kind.startswith("snapshot-"):
            snapshot_action(shard, kind)
        elif kind == "crash":
            before = (durable_state(shard), records(shard))
            shard.close(snapshot=False)
            shard = DurableSessions(path, SMALL, clock, lock_wait_s=0.2)
            assert (durable_state(shard), records(shard)) == before
        elif kind == "tick":
            clock.advance(action[1])
        assert len(shard.store.idempotency) <= SMALL.idempotency_max_records
    shard.close(snapshot=False)


def durable_state(shard: DurableSessions) -> dict[Any, Any]:
    return {key: encode_session(s) for key, s in shard.store._sessions.items()}


def keyed_ops(action: tuple[Any, ...]) -> list[Any]:
    """One step's batch; its errors (a second create, a gone session, a conflict) are answers."""
    kind, n = action[0], action[1]
    sid = session_id_for_key("acme", f"create-{n}")
    if kind == "create":
        return [Idempotent(f"create-{n}", "fp", CreateSession("acme", sid, "s", 60, {}))]
    if kind == "say":
        return [Idempotent(f"say-{action[2]}", "fp", AppendMessages("acme", sid, (NewMessage("user", "x"),)))]
    if kind == "delete":
        delete = DeleteSession("acme", sid)
        return [Idempotent("del", "fp", delete) if action[2] else delete]
    return [EndSession("acme", sid, SessionStatus.COMPLETED), PurgeSessions((("acme", sid),))]

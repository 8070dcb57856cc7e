"""Encode before apply: an op the log cannot hold fails alone, before anything of its
batch is applied; the rest of the batch, other organizations' ops included, goes on; and the state
rebuilt from disk is always the live state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.errors import EngineError
from engine.idempotency import Idempotent, Replayed
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams
from engine.memory.ops import QueryVectors, UpsertVectors
from engine.oplog import UnencodableOp
from engine.sessions.codec import encode_session
from engine.sessions.durable import DurableSessions, recover
from engine.sessions.ops import AppendMessages, CreateSession, GetSession, ReplaceContext
from engine.sessions.session import NewMessage, SessionStatus
from tests.support.snapshots import snapshot_action

CONFIG = DurabilityConfig(snapshot_chunk_sessions=1, snapshot_chunk_messages=2)
ORGS = ("acme", "beta", "gamma")
POISONS = ("deep", "bigint", "surrogate")


def session_of(org: str) -> str:
    return "sess_" + f"{ORGS.index(org):032x}"


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


def poisoned(kind: str, marker: str) -> dict[str, Any]:
    """A context the gateway would refuse, which reaches the shard anyway (a gateway of another
    version, a bug): the log cannot hold it."""
    if kind == "deep":
        return {"m": marker, "x": nested(300, 1)}
    if kind == "bigint":
        return {"m": marker, "x": 2**70}
    return {"m": marker, "x": "\ud800"}  # a lone surrogate is not UTF-8


def live_state(shard: DurableSessions) -> tuple[Any, Any]:
    return {k: encode_session(s) for k, s in shard.store._sessions.items()}, list(shard.store.idempotency)


def disk_state(shard: DurableSessions) -> tuple[Any, Any]:
    # Read only, changing nothing on disk (a snapshot may be half written beside the log).
    store, _, _ = recover(shard.directory, until_lsn=shard.lsn)
    return {k: encode_session(s) for k, s in store._sessions.items()}, list(store.idempotency)


batch_item = st.tuples(
    st.sampled_from(ORGS),
    st.sampled_from(("append", "context", "create")),
    st.one_of(st.none(), st.sampled_from(POISONS)),  # None: a good op
    st.booleans(),  # under an Idempotency-Key
)
step = st.one_of(
    st.tuples(st.just("batch"), st.lists(batch_item, min_size=1, max_size=6)),
    st.tuples(st.just("snapshot-begin")),
    st.tuples(st.just("snapshot-step")),
    st.tuples(st.just("snapshot-finish")),
    st.tuples(st.just("crash")),
    st.tuples(st.just("restart")),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(step, max_size=30))
def test_unencodable_ops_fail_alone_and_the_disk_always_holds_the_live_state(
    tmp_path_factory: Any, script: list[Any]
) -> None:
    path = tmp_path_factory.mktemp("poison")
    clock = ManualClock()
    shard = DurableSessions(path, CONFIG, clock, lock_wait_s=0.2)
    shard.commit([CreateSession(org, session_of(org), org, 10**6, {}) for org in ORGS])
    counter = 0
    failed_markers: set[str] = set()
    failed_keys: dict[str, Any] = {}

    for action in script:
        kind = action[0]
        if kind == "batch":
            ops, markers = [], []
            for org, what, poison, keyed in action[1]:
                counter += 1
                marker = f"{org}-{counter}"
                sid = session_of(org)
                if what == "append":
                    content = marker + ("\ud800" if poison else "")
                    op: Any = AppendMessages(org, sid, (NewMessage("user", content),))
                elif what == "context":
                    op = ReplaceContext(org, sid, poisoned(poison, marker) if poison else {"m": marker})
                else:
                    new_id = "sess_" + f"{10_000 + counter:032x}"
                    op = CreateSession(org, new_id, marker, 60, poisoned(poison, marker) if poison else {})
                if keyed:
                    op = Idempotent(f"key-{marker}", "fp", op)
                ops.append(op)
                markers.append((marker, poison))
            results = shard.commit(ops)
            for op, (marker, poison), result in zip(ops, markers, results, strict=True):
                if poison:
                    assert isinstance(result, UnencodableOp), result
                    failed_markers.add(marker)
                    if isinstance(op, Idempotent):
                        failed_keys[op.key] = op
                else:
                    assert not isinstance(result, EngineError), result  # others' ops never fail
        elif kind.startswith("snapshot-"):
            snapshot_action(shard, kind)
        elif kind == "crash":
            shard.close(snapshot=False)
            shard = DurableSessions(path, CONFIG, clock, lock_wait_s=0.2)
        elif kind == "restart":
            shard.close(snapshot=True)
            shard = DurableSessions(path, CONFIG, clock, lock_wait_s=0.2)

        live = live_state(shard)
        assert disk_state(shard) == live, "nothing is visible that the log does not hold"
        visible = repr(live)
        assert not any(f"'{marker}'" in visible for marker in failed_markers), "a failed op is visible"

    # A retry of a refused keyed op is refused again: no record was kept of it.
    for op in failed_keys.values():
        (again,) = shard.commit([op])
        assert isinstance(again, UnencodableOp) and not isinstance(again, Replayed)
    shard.close(snapshot=False)


def test_a_refused_context_leaves_the_version_for_the_next_conditional_update(tmp_path: Path) -> None:
    """The sequence of the bug report: a deep context beside another organization's appends."""
    shard = DurableSessions(tmp_path, CONFIG, ManualClock(), lock_wait_s=0.2)
    a, b = session_of("acme"), session_of("beta")
    shard.commit([CreateSession("acme", a, "a", 600, {}), CreateSession("beta", b, "b", 600, {})])
    appends = [AppendMessages("beta", b, (NewMessage("user", f"m{i}"),)) for i in range(11)]
    results = shard.commit([*appends[:5], ReplaceContext("acme", a, nested(260, 1)), *appends[5:]])
    assert isinstance(results[5], UnencodableOp)
    assert all(isinstance(r, list) for r in results[:5] + results[6:])
    view = shard.store.apply(GetSession("acme", a), 0)
    assert view["version"] == 1 and view["context"] == {}
    (updated,) = shard.commit([ReplaceContext("acme", a, {"ok": True}, if_match=1)])
    assert updated["version"] == 2
    shard.close(snapshot=True)
    again = DurableSessions(tmp_path, CONFIG, ManualClock(), lock_wait_s=0.2)
    assert again.store.apply(GetSession("acme", a), 0)["context"] == {"ok": True}
    assert again.store.apply(GetSession("beta", b), 0)["message_count"] == 11
    assert again.store.apply(GetSession("beta", b), 0)["status"] == SessionStatus.ACTIVE.value
    again.close()


def test_memory_metadata_the_log_cannot_hold_fails_alone(tmp_path: Path) -> None:
    memory = DurableMemory(tmp_path, CONFIG, IndexParams(), ManualClock(), lock_wait_s=0.2)
    vector = np.array([[1.0, 0.0]], dtype=np.float32)
    good = UpsertVectors("beta", "ns", ("ok",), vector, ({"n": 1},))
    bad = Idempotent("k", "fp", UpsertVectors("acme", "ns", ("bad",), vector, ({"x": nested(300, 1)},)))
    results = memory.commit([bad, good, QueryVectors("acme", "ns", vector[0], 5)])
    assert isinstance(results[0], UnencodableOp)
    assert results[1] == {"upserted": 1} and results[2] == []
    assert len(memory.store.idempotency) == 0
    memory.close(snapshot=False)
    again = DurableMemory(tmp_path, CONFIG, IndexParams(), ManualClock(), lock_wait_s=0.2)
    assert len(again.store) == 1
    again.close()

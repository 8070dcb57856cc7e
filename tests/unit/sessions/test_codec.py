"""Every declared op survives encoding, decoding and replay; the encoding is by field name; log
records written before that (positional arrays) are still read."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from ray import cloudpickle

from engine.clock import ManualClock
from engine.config import DurabilityConfig
from engine.errors import EngineError
from engine.idempotency import Idempotent
from engine.memory import codec as memory_codec
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams
from engine.memory.ops import MEMORY_OPS, DeleteVectors, ForgetSessions, ImportVectors, UpsertVectors
from engine.oplog import TAG, UnencodableOp
from engine.sessions.codec import decode_op, decode_session, encode_op, encode_session
from engine.sessions.durable import DurableSessions
from engine.sessions.ops import (
    SESSION_OPS,
    AppendMessages,
    CheckKey,
    CreateSession,
    DeleteSession,
    EndSession,
    ExpireDue,
    FailSummary,
    FinishSummary,
    ForkSession,
    GetSession,
    ImportSession,
    ListSessions,
    MarkIndexed,
    MarkLive,
    PurgeSessions,
    ReplaceContext,
    RequestSummary,
    ResetLive,
    StartSummary,
    UpdateSession,
    UpgradeSummary,
)
from engine.sessions.session import NewMessage, SessionStatus

A, B, C, D, E, F = ("sess_" + f"{i:032x}" for i in range(6))
# A session as an export brings it in (its snapshot encoding, engine.sessions.codec.encode_session).
IMPORTED = [
    "acme",
    F,
    "imported",
    60,
    1,
    2,
    60_001,
    "closed",
    1,
    5,
    "pending",
    None,
    {},
    [["user", "hi", 1, None, None]],
]

# One run that uses every logged session op, in an order in which each one succeeds.
SESSION_SCRIPT: list[tuple[int, Any]] = [  # (ms to advance first, op)
    (0, CreateSession("acme", A, "a", 3600, {"plan": [1, {"deep": None}], "n": 2**63})),
    (1, AppendMessages("acme", A, (NewMessage("user", "hi"), NewMessage("tool", "42", "call_1", "calc")))),
    (1, MarkLive("acme", ((A, 0, 2, False, "a"), ("sess_gone", 0, 1, True, None)))),
    (1, ResetLive("acme", A)),
    (1, ForkSession("acme", E, A, 2, name="branch", ttl_s=60, context={"b": 1})),
    (1, Idempotent("k1", "fp1", ReplaceContext("acme", A, {"v": 2}, 1))),
    (1, UpdateSession("acme", A, name="renamed", ttl_s=7200)),
    (1, UpdateSession("acme", A, ttl_s=60)),
    (1, EndSession("acme", A, SessionStatus.CLOSED)),
    (1, StartSummary("acme", A)),
    (1, FailSummary("acme", A, "model busy", False)),
    (1, StartSummary("acme", A)),
    (1, MarkIndexed("acme", A, 3)),
    (1, FinishSummary("acme", A, "they said hi", "extractive", 2, 2, method="extractive", upgrade=True)),
    (1, UpgradeSummary("acme", A, "rejected", "tiny", None, "dialogue", 2, 2)),
    (1, RequestSummary("acme", A)),
    (0, CreateSession("acme", B, "b", 1, {})),
    (2000, ExpireDue()),
    (0, CreateSession("other", C, "c", 60, {})),
    (0, Idempotent("k2", "fp2", DeleteSession("other", C))),
    (0, CreateSession("acme", D, "d", 60, {})),
    (0, EndSession("acme", D, SessionStatus.COMPLETED)),
    (1, PurgeSessions((("acme", D),))),
    (0, ImportSession("acme", F, IMPORTED)),
]

MEMORY_SCRIPT: list[Any] = [
    UpsertVectors("acme", "notes", ("x", "y"), np.eye(2, 3, dtype=np.float32), ({"k": [1, {}]}, {})),
    Idempotent("k3", "fp3", DeleteVectors("acme", "notes", ("y",))),
    UpsertVectors(
        "acme",
        "session-memory",
        ("s1#1", "s1"),
        np.eye(2, 3, dtype=np.float32),
        (
            {"session_id": "s1", "kind": "turn", "seq": 1, "role": "user"},
            {"session_id": "s1", "kind": "session"},
        ),
        texts=("I moved to Lisbon", "trip\nI moved to Lisbon"),
    ),
    ForgetSessions("acme", ("s1",)),
    ImportVectors(
        "acme", "notes", ("x", "z"), np.eye(2, 3, dtype=np.float32), ({}, {"k": 1}), (None, "imported text")
    ),
]


def _inner(op: Any) -> Any:
    return op.op if isinstance(op, Idempotent) else op


def test_the_scripts_use_every_logged_op() -> None:
    """A new logged op must join these scripts, and so is tested below like every other."""
    assert {type(_inner(op)) for _, op in SESSION_SCRIPT} == set(SESSION_OPS.logged_types)
    assert {type(_inner(op)) for op in MEMORY_SCRIPT} == set(MEMORY_OPS.logged_types)


@pytest.mark.parametrize("op", [op for _, op in SESSION_SCRIPT], ids=lambda op: type(_inner(op)).__name__)
def test_every_session_op_survives_encode_and_decode_by_field_name(op: Any) -> None:
    encoded = orjson.loads(encode_op(op))
    assert decode_op(encoded) == op
    inner = encoded["inner"] if isinstance(op, Idempotent) else encoded
    spec = SESSION_OPS.spec(_inner(op))
    assert inner[TAG] == spec.tag
    assert set(inner) - {TAG} <= {f.name for f in spec.fields}, "fields by name, never by position"


READ_OPS: list[Any] = [
    GetSession("acme", A, 2, 10),
    ListSessions("acme", 50, SessionStatus.ACTIVE, (1, A)),
    CheckKey("acme", A, "k", "fp", DeleteSession("acme", A)),
    AppendMessages("acme", A, (NewMessage("user", "hi"),), max_messages=100),  # an unlogged field set
]


@pytest.mark.parametrize(
    "op", [op for _, op in SESSION_SCRIPT] + READ_OPS, ids=lambda op: type(_inner(op)).__name__
)
def test_every_session_op_crosses_to_a_shard_by_pickle_unchanged(op: Any) -> None:
    """Ops reach shard actors pickled by their fields (Op.__reduce__), not by their dataclass's own
    pickling; every field, logged or not, arrives."""
    for copy in (pickle.loads(pickle.dumps(op)), pickle.loads(cloudpickle.dumps(op))):
        assert copy == op and type(copy) is type(op)


def test_memory_ops_survive_encode_and_decode_with_exact_vectors() -> None:
    upsert = MEMORY_SCRIPT[0]
    decoded = memory_codec.decode_op(orjson.loads(memory_codec.encode_op(upsert)))
    assert decoded == upsert and decoded.vectors.dtype == np.float32
    assert np.array_equal(decoded.vectors, upsert.vectors)
    assert memory_codec.decode_op(orjson.loads(memory_codec.encode_op(MEMORY_SCRIPT[1]))) == MEMORY_SCRIPT[1]


def test_unlogged_fields_stay_out_of_the_log() -> None:
    create = CreateSession("acme", A, "a", 60, {}, max_active=3)
    assert "max_active" not in orjson.loads(encode_op(create))
    assert decode_op(orjson.loads(encode_op(create))).max_active is None


def test_every_session_op_replays_to_the_state_it_made(tmp_path: Path) -> None:
    clock = ManualClock()
    shard = DurableSessions(tmp_path, DurabilityConfig(), clock, lock_wait_s=0.2)
    for advance, op in SESSION_SCRIPT:
        clock.advance(advance)
        (result,) = shard.commit([op])
        assert not isinstance(result, EngineError), (op, result)
    live = ({k: encode_session(s) for k, s in shard.store._sessions.items()}, list(shard.store.idempotency))
    shard.close(snapshot=False)
    replayed = DurableSessions(tmp_path, DurabilityConfig(), clock, lock_wait_s=0.2)
    assert replayed.recovery.records_replayed == len(SESSION_SCRIPT)
    rebuilt = (
        {k: encode_session(s) for k, s in replayed.store._sessions.items()},
        list(replayed.store.idempotency),
    )
    assert rebuilt == live
    replayed.close()


def test_every_memory_op_replays(tmp_path: Path) -> None:
    memory = DurableMemory(tmp_path, DurabilityConfig(), IndexParams(), ManualClock(), lock_wait_s=0.2)
    assert not any(isinstance(r, EngineError) for r in memory.commit(MEMORY_SCRIPT))
    memory.close(snapshot=False)
    again = DurableMemory(tmp_path, DurabilityConfig(), IndexParams(), ManualClock(), lock_wait_s=0.2)
    (index,) = (index for _, index in again.store.namespaces())
    assert len(index) == 2 and len(again.store.idempotency) == 1
    # The import skipped the id the namespace held and kept the new one's text.
    kept, added = index.faiss_id("x"), index.faiss_id("z")
    assert kept is not None and added is not None
    assert index.entry(kept) == ("x", {"k": [1, {}]}) and index.text(added) == "imported text"
    again.close()


# Log records of engines before field-name encoding, as they wrote them.
POSITIONAL = [
    (["create", "acme", A, "a", 60, {"x": 1}], CreateSession("acme", A, "a", 60, {"x": 1})),
    (
        ["append", "acme", A, [["user", "hi", None, None], ["tool", "4", "c1", "calc"]]],
        AppendMessages("acme", A, (NewMessage("user", "hi"), NewMessage("tool", "4", "c1", "calc"))),
    ),
    (["context", "acme", A, {}, 3], ReplaceContext("acme", A, {}, 3)),
    (["update", "acme", A, None, 5], UpdateSession("acme", A, None, 5)),
    (["end", "acme", A, "closed"], EndSession("acme", A, SessionStatus.CLOSED)),
    (["delete", "acme", A], DeleteSession("acme", A)),
    (["expire"], ExpireDue()),
    (["summary_request", "acme", A], RequestSummary("acme", A)),
    (["summary_start", "acme", A], StartSummary("acme", A)),
    (["summary_done", "acme", A, "t", "m", 1, 2], FinishSummary("acme", A, "t", "m", 1, 2)),
    (["summary_fail", "acme", A, "e", True], FailSummary("acme", A, "e", True)),
    (["purge", [["acme", A]]], PurgeSessions((("acme", A),))),
    (["once", "k", "fp", ["delete", "acme", A]], Idempotent("k", "fp", DeleteSession("acme", A))),
]


@pytest.mark.parametrize(("encoded", "op"), POSITIONAL, ids=lambda v: v[0] if isinstance(v, list) else "")
def test_positional_records_of_older_engines_are_still_read(encoded: list[Any], op: Any) -> None:
    assert decode_op(encoded) == op


def test_positional_memory_records_are_still_read() -> None:
    import base64

    raw = np.ones((1, 2), dtype="<f4")
    old = ["upsert", "acme", "ns", ["x"], 2, base64.b64encode(raw.tobytes()).decode(), [{"k": 1}]]
    decoded = memory_codec.decode_op(old)
    assert isinstance(decoded, UpsertVectors) and np.array_equal(decoded.vectors, raw)
    assert memory_codec.decode_op(["delete", "acme", "ns", ["x"]]) == DeleteVectors("acme", "ns", ("x",))


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "context", [nested(300), {"n": 2**64}, {"n": -(2**63) - 1}], ids=["too deep", "2^64", "-2^63-1"]
)
def test_a_change_the_log_cannot_hold_is_refused_as_a_validation_error(context: dict[str, Any]) -> None:
    with pytest.raises(UnencodableOp) as refused:
        encode_op(CreateSession("acme", A, "a", 60, context))
    assert refused.value.code == "VALIDATION_ERROR" and refused.value.details["op"] == "CreateSession"


def test_unknown_tags_and_fields_are_not_ops() -> None:
    with pytest.raises(ValueError, match="unknown"):
        decode_op({TAG: "teleport", "org": "acme"})
    with pytest.raises(ValueError, match="unknown fields"):
        decode_op({TAG: "delete", "org": "acme", "session_id": A, "colour": "red"})


@pytest.mark.parametrize("depth", [64, 200], ids=["default limit", "largest limit"])
def test_the_log_holds_everything_the_gateway_lets_through(tmp_path: Path, depth: int) -> None:
    """limits.max_json_depth is at most 200: a context or metadata that deep, wrapped in every
    layer the log and the snapshots add (a keyed op, a record, a snapshot chunk), is stored."""
    context = nested(depth)
    clock = ManualClock()
    shard = DurableSessions(tmp_path / "s", DurabilityConfig(), clock, lock_wait_s=0.2)
    create = Idempotent("k", "fp", CreateSession("acme", A, "a", 60, context))
    results = shard.commit([create, Idempotent("k2", "fp", ReplaceContext("acme", A, context, 1))])
    assert not any(isinstance(r, EngineError) for r in results)
    shard.close(snapshot=True)  # the records, holding views with the context, go into the snapshot
    again = DurableSessions(tmp_path / "s", DurabilityConfig(), clock, lock_wait_s=0.2)
    assert again.store._sessions[("acme", A)].context == context
    again.close()
    memory = DurableMemory(tmp_path / "m", DurabilityConfig(), IndexParams(), clock, lock_wait_s=0.2)
    upsert = UpsertVectors("acme", "ns", ("x",), np.ones((1, 2), dtype=np.float32), (context,))
    assert memory.commit([Idempotent("k", "fp", upsert)]) == [{"upserted": 1}]
    memory.close(snapshot=True)
    DurableMemory(tmp_path / "m", DurabilityConfig(), IndexParams(), clock, lock_wait_s=0.2).close()


def test_a_live_mark_logged_before_marks_named_the_session_is_read_with_no_name() -> None:
    encoded = orjson.loads(encode_op(MarkLive("acme", ((A, 0, 2, False, "a"),))))
    older = orjson.loads(orjson.dumps(encoded).replace(b',"a"]', b"]"))
    assert decode_op(older) == MarkLive("acme", ((A, 0, 2, False, None),))


def test_a_session_that_ended_before_live_memory_existed_is_read_as_done_for_it() -> None:
    """Snapshots of older engines lack live_through: an ended session is not live-indexed at the
    upgrade (a closed one was indexed at close); an open one is, from its first message."""
    ended = decode_session(IMPORTED)
    assert (ended.live_through, ended.live_ended) == (len(ended.messages), True)
    assert not ended.live_behind
    active = decode_session([*IMPORTED[:7], "active", *IMPORTED[8:9], None, None, None, {}, IMPORTED[13]])
    assert (active.live_through, active.live_ended) == (0, False)
    assert active.live_behind

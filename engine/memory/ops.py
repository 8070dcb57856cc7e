"""The memory shard's ops: what a gateway or a closing job asks of a memory shard, declared once
each (engine.oplog: logged with its tag, or a read) and applied by MemoryStore.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.oplog import TUPLE, FieldCodec, Op, OpRegistry, coded, unlogged

from .index import Mode, Where

MEMORY_OPS = OpRegistry("memory")


def _encode_vectors(vectors: np.ndarray) -> dict[str, Any]:
    # Little-endian float32 as base64: replay rebuilds exactly the vectors that were acknowledged.
    raw = np.ascontiguousarray(vectors, dtype="<f4")
    return {"dimension": int(raw.shape[1]), "f32": base64.b64encode(raw.tobytes()).decode()}


def decode_vectors(encoded: dict[str, Any]) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(encoded["f32"]), dtype="<f4")
    return raw.reshape(-1, int(encoded["dimension"])).astype(np.float32)


VECTORS = FieldCodec(_encode_vectors, decode_vectors)


class MemoryOp(Op):
    """What every memory op derives from (for type checkers; MEMORY_OPS is what the shard goes by)."""

    __slots__ = ()


@MEMORY_OPS.logged("upsert", "_upsert")
@dataclass(slots=True, frozen=True)
class UpsertVectors(MemoryOp):
    """`vectors` are normalized float32 rows, one per id."""

    org: str
    namespace: str
    ids: tuple[str, ...] = coded(TUPLE)
    vectors: np.ndarray = coded(VECTORS, compare=False)
    metadata: tuple[dict[str, Any], ...] = coded(TUPLE)
    # Quota checked when the op first runs; not logged, so replay never refuses what was accepted.
    max_vectors: int | None = unlogged()
    # One per id when given (None: that vector has none): kept, and indexed for lexical search.
    texts: tuple[str | None, ...] = coded(TUPLE, default=())


@MEMORY_OPS.logged("delete", "_delete")
@dataclass(slots=True, frozen=True)
class DeleteVectors(MemoryOp):
    org: str
    namespace: str
    ids: tuple[str, ...] = coded(TUPLE)


@MEMORY_OPS.logged("forget_sessions", "_forget_sessions")
@dataclass(slots=True, frozen=True)
class ForgetSessions(MemoryOp):
    """Everything session memory holds of these sessions: turns, session entry, summary."""

    org: str
    session_ids: tuple[str, ...] = coded(TUPLE)


@MEMORY_OPS.read("_query")
@dataclass(slots=True, frozen=True)
class QueryVectors(MemoryOp):
    org: str
    namespace: str
    vector: np.ndarray | None = field(compare=False)  # normalized; None for a lexical query
    top_k: int
    where: Where | None = None
    text: str | None = None  # the query's text, for lexical and hybrid modes
    mode: Mode = "dense"
    min_relevance: float | None = None  # session memory: drop matches less relevant than this
    as_of: int | None = None  # session memory: search it as it stood then (epoch ms)


@MEMORY_OPS.read("_session_turn_vectors")
@dataclass(slots=True, frozen=True)
class SessionTurnVectors(MemoryOp):
    """A read: the turns session memory holds of a session, as {"seqs": [...], "vectors": rows in
    the same order}, by seq (a closing job makes the session's vector from the turns live memory
    indexed while it was open)."""

    org: str
    session_id: str


@MEMORY_OPS.read("_stats")
@dataclass(slots=True, frozen=True)
class MemoryStats(MemoryOp):
    pass


@MEMORY_OPS.logged("import", "_import", log_without_result=False)
@dataclass(slots=True, frozen=True)
class ImportVectors(MemoryOp):
    """Vectors read from an export (engine.memory.export), stored as UpsertVectors stores them,
    except that an id the namespace holds already is skipped, not replaced: an import sent again
    changes nothing. Answers {"imported": n, "skipped": m}, or None (not logged) when every id was
    held. Replay skips the same ids, since the namespace holds then what it held when the op ran."""

    org: str
    namespace: str
    ids: tuple[str, ...] = coded(TUPLE)
    vectors: np.ndarray = coded(VECTORS, compare=False)
    metadata: tuple[dict[str, Any], ...] = coded(TUPLE)
    texts: tuple[str | None, ...] = coded(TUPLE)
    max_vectors: int | None = unlogged()  # as UpsertVectors': checked when the op first runs


@MEMORY_OPS.read("_open_export")
@dataclass(slots=True, frozen=True)
class OpenVectorExport(MemoryOp):
    """A read that opens an export cursor over the organization's own namespaces as they are now
    (engine.memory.export.VectorCursor); answers {"watermark": the log record the cut follows,
    "namespaces": how many}. Bounded and lapsing as the session shards' OpenExport."""

    org: str
    export_id: str
    max_open: int
    idle_ms: int
    max_per_org: int


@MEMORY_OPS.read("_export_page")
@dataclass(slots=True, frozen=True)
class VectorExportPage(MemoryOp):
    """The next vector lines of an open export: {"lines": [...], "done": bool}; the cursor closes
    when done. `max_lines` 0 only keeps the cursor from lapsing."""

    org: str
    export_id: str
    max_lines: int


@MEMORY_OPS.read("_close_export")
@dataclass(slots=True, frozen=True)
class CloseVectorExport(MemoryOp):
    org: str
    export_id: str


@MEMORY_OPS.read("_open_exports")
@dataclass(slots=True, frozen=True)
class OpenVectorExports(MemoryOp):
    """How many export cursors the shard holds open: {"exports": n}."""

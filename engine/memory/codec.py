"""Memory ops to and from the log. Ops are JSON objects by field name, derived from their
declarations (engine.memory.ops: MEMORY_OPS, vectors as base64 float32); log records written
before that hold positional arrays, which are still read. Built like engine.sessions.codec."""

from __future__ import annotations

from typing import Any

from engine.idempotency import Idempotent

from .ops import MEMORY_OPS, DeleteVectors, MemoryOp, UpsertVectors, decode_vectors


def encode_op(op: MemoryOp | Idempotent) -> bytes:
    """The op's exact log bytes; raises UnencodableOp (a VALIDATION_ERROR) if the log cannot hold it."""
    return MEMORY_OPS.encode_bytes(op)


def decode_op(encoded: dict[str, Any] | list[Any]) -> MemoryOp | Idempotent:
    if isinstance(encoded, dict):
        op: MemoryOp | Idempotent = MEMORY_OPS.decode(encoded)
        return op
    # Log records written before ops were encoded by field name: positional arrays.
    if encoded[0] == "once":
        _, key, fingerprint, inner = encoded
        return Idempotent(key, fingerprint, decode_op(inner))
    tag, org, namespace, ids, *rest = encoded
    if tag == "upsert":
        dimension, data, metadata = rest
        vectors = decode_vectors({"dimension": dimension, "f32": data})
        return UpsertVectors(org, namespace, tuple(ids), vectors, tuple(metadata))
    if tag == "delete":
        return DeleteVectors(org, namespace, tuple(ids))
    raise ValueError(f"unknown memory op {tag!r}")

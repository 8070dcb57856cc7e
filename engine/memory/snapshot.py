"""A memory shard's snapshot files `memory-<lsn>.snap` (engine.storage.snapshot's parts): every
namespace as its id/metadata header plus the FAISS index bytes (`faiss.serialize_index`), split
over frames of at most 256 MiB, then the idempotency records, and a trailer
`{"end": true, "namespaces": n}`. Built like engine.sessions.snapshot.

A namespace's records (`[FAISS id, external id, metadata, text]`) go in its header frame while
they fit in 256 MiB of JSON, as every engine has written them. Past that the header holds the
first such array and `record_frames`: how many frames of further arrays follow it, before the
index bytes, so that no frame nears the reader's limit (engine.storage.frames.MAX_FRAME_BYTES).

A header's `kind` says which FAISS index follows (engine.memory.vectors: flat, ivf, or an earlier
engine's hnsw); a header without `trained_rows` is an earlier engine's. Its records are frozen on
the shard's thread and listed here, in the writer's thread (engine.memory.index.records_of)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from engine.errors import CorruptFile
from engine.storage.layout import FORMAT_VERSION
from engine.storage.snapshot import SnapshotFile, open_snapshot

from .index import NamespaceIndex, records_of
from .store import MemoryStore

SNAPSHOT_MAGIC = b"SEMEM01\n"
SNAPSHOT_PREFIX = "memory-"
_PART_BYTES = 256 * 1024 * 1024
_RECORDS_PER_FRAME = 10_000  # idempotency records of vector writes: small answers, far below a frame's limit
_RECORD_BYTES = _PART_BYTES  # a namespace's records in one frame, at most
_RECORDS_PER_CHUNK = 10_000  # a namespace's records encoded at a time, then joined up to _RECORD_BYTES


def write_snapshot(
    directory: Path,
    lsn: int,
    now_ms: int,
    parts: list[tuple[str, str, dict[str, Any], bytes]],
    records: list[list[Any]],
) -> int:
    """Every namespace's (org, namespace, header, index bytes) and the encoded idempotency records,
    durable under the snapshot's name; returns its size in bytes. Blocking I/O."""
    file = SnapshotFile(directory, SNAPSHOT_PREFIX, SNAPSHOT_MAGIC, FORMAT_VERSION, lsn, now_ms)
    try:
        for org, namespace, header, index_bytes in parts:
            pieces = [index_bytes[i : i + _PART_BYTES] for i in range(0, len(index_bytes), _PART_BYTES)]
            first, *more = _record_arrays(records_of(header))
            listed = {**header, "records": orjson.Fragment(first)}
            if more:
                listed["record_frames"] = len(more)
            file.write({"org": org, "namespace": namespace, "parts": len(pieces), **listed})
            for array in more:
                file.write_bytes(array)
            for piece in pieces:
                file.write_bytes(piece)
        for i in range(0, len(records), _RECORDS_PER_FRAME):
            file.write({"idempotency": records[i : i + _RECORDS_PER_FRAME]})
        return file.finish({"namespaces": len(parts)})
    except BaseException:
        file.abandon()  # a disk that refused it: no temporary file left behind
        raise


def read_snapshot(path: Path, store: MemoryStore) -> int:
    """Load the snapshot into an empty store; returns its lsn. Any damage raises CorruptFile."""
    lsn, frames = open_snapshot(path, SNAPSHOT_MAGIC, FORMAT_VERSION)
    for offset, payload in frames:
        meta = orjson.loads(payload)
        if "idempotency" in meta:
            store.idempotency.load(meta["idempotency"])
            continue
        if meta.get("end"):
            if meta.get("namespaces") != sum(1 for _ in store.namespaces()):
                raise CorruptFile(path, offset, "snapshot trailer does not match its contents")
            return lsn
        for _ in range(meta.get("record_frames", 0)):
            more = next(frames, None)
            if more is None:
                raise CorruptFile(path, offset, "snapshot ends inside a namespace")
            meta["records"].extend(orjson.loads(more[1]))
        pieces = []
        for _ in range(meta["parts"]):
            piece = next(frames, None)
            if piece is None:
                raise CorruptFile(path, offset, "snapshot ends inside a namespace")
            pieces.append(piece[1])
        store.adopt(
            meta["org"], meta["namespace"], NamespaceIndex.from_parts(meta, b"".join(pieces), store.params)
        )
    raise CorruptFile(path, path.stat().st_size, "snapshot ends without its trailer")


def _record_arrays(records: Sequence[Any]) -> list[bytes]:
    """The records as JSON arrays of at most _RECORD_BYTES each (one record larger than that is an
    array of its own); one array, byte for byte `orjson.dumps(records)`, when they fit."""
    arrays: list[bytes] = []
    held: list[bytes] = []  # encoded records not yet in an array, without their brackets
    size = 0
    for encoded in _encoded_chunks(records):
        inner = encoded[1:-1]
        if held and size + 1 + len(inner) > _RECORD_BYTES - 2:
            arrays.append(b"[" + b",".join(held) + b"]")
            held, size = [], 0
        held.append(inner)
        size += len(inner) + 1
    if held or not arrays:
        arrays.append(b"[" + b",".join(held) + b"]")
    return arrays


def _encoded_chunks(records: Sequence[Any]) -> Iterator[bytes]:
    """JSON arrays of consecutive records, each under _RECORD_BYTES unless it holds a single record."""
    for start in range(0, len(records), _RECORDS_PER_CHUNK):
        pending = [records[start : start + _RECORDS_PER_CHUNK]]
        while pending:
            chunk = pending.pop()
            encoded = orjson.dumps(chunk)
            if len(encoded) <= _RECORD_BYTES - 2 or len(chunk) == 1:
                yield encoded
            else:
                half = len(chunk) // 2
                pending += [chunk[half:], chunk[:half]]  # the first half is taken next

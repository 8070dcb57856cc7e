"""A memory shard's snapshot files `memory-<lsn>.snap` (engine.storage.snapshot's parts): every
namespace as its id/metadata header plus the FAISS index bytes (`faiss.serialize_index`), split
over frames of at most 256 MiB, then the idempotency records, and a trailer
`{"end": true, "namespaces": n}`. Built like engine.sessions.snapshot.

A header's `kind` says which FAISS index follows (engine.memory.vectors: flat, ivf, or an earlier
engine's hnsw); a header without `trained_rows` is an earlier engine's. Its records are frozen on
the shard's thread and listed here, in the writer's thread (engine.memory.index.records_of)."""

from __future__ import annotations

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
            listed = {**header, "records": records_of(header)}
            file.write({"org": org, "namespace": namespace, "parts": len(pieces), **listed})
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

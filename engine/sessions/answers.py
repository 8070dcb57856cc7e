"""Answers that leave the shard as JSON: the gateway sends their bytes as they are.

A view crosses from a shard actor to a gateway once per request. As a dict, Ray packs it in the
shard and unpacks it in the gateway, and the gateway encodes it again, all on the gateway's one
core, the engine's bottleneck. Encoded by orjson here, it crosses as one bytes object, which Ray
passes for a small part of that (benchmarks/RESULTS.md §13.1).

Only the answers of ops a client asked for are encoded (`encode_answers`), in shapes Ray packs
natively (a dataclass would be pickled: 20 µs more); what the engine itself reads (a ping's
counts, an error, an earlier run's answer's wrapper) stays a value:

- a session's view: `(version, body)`, the version for the ETag (a list once it has crossed Ray);
- an append's stored messages: the body, a JSON array;
- a list page: `{"keys", "views", "ends", "has_more"}`, each session's sort key, and all their
  views in one body, the i-th ending at `ends[i]`, so the gateway merges shards by key and
  slices the views it keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from engine.errors import EngineError
from engine.idempotency import Idempotent, Replayed
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    EndSession,
    GetSession,
    ListSessions,
    ReplaceContext,
    RequestSummary,
    UpdateSession,
)

_VIEWS = (CreateSession, GetSession, ReplaceContext, UpdateSession, EndSession, RequestSummary)


def encode_answers(ops: Sequence[Any], results: list[Any]) -> list[Any]:
    """Each result of a client's op encoded as above; the rest as they are."""
    pairs = zip(ops, results, strict=True)
    return [_encode(op.op if type(op) is Idempotent else op, result) for op, result in pairs]


def _encode(op: Any, result: Any) -> Any:
    if isinstance(result, EngineError):
        return result
    if type(result) is Replayed:
        return Replayed(_encode(op, result.value))
    if isinstance(op, _VIEWS):
        return (result["version"], orjson.dumps(result))
    if isinstance(op, AppendMessages):
        return orjson.dumps(result)
    if isinstance(op, ListSessions):
        return _page(result)
    return result


def _page(result: dict[str, Any]) -> dict[str, Any]:
    keys = []
    views = bytearray()
    ends = []
    for key, view in result["items"]:
        keys.append(key)
        views += orjson.dumps(view)
        ends.append(len(views))
    return {"keys": keys, "views": bytes(views), "ends": ends, "has_more": result["has_more"]}


def page_items(page: dict[str, Any]) -> list[tuple[Any, bytes]]:
    """A list page's (sort key, view body) pairs, newest first."""
    views, ends = page["views"], page["ends"]
    return [(key, views[start:end]) for key, start, end in zip(page["keys"], [0, *ends], ends, strict=False)]

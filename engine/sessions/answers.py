"""Answers that leave the shard as JSON: the gateway sends their bytes as they are.

A view crosses from a shard actor to a gateway once per request. As a dict, Ray packs it in the
shard and unpacks it in the gateway, and the gateway encodes it again, all on the gateway's one
core, the engine's bottleneck. Encoded by orjson here, it crosses as one bytes object, which Ray
passes for a small part of that
(benchmarks/RESULTS.md#1-answers-leave-the-shard-as-json-69bdbe2).

Only the answers of ops a client asked for are encoded (`encode_answers`), in shapes Ray packs
natively (a dataclass would be pickled, at a cost of its own); what the engine itself reads (a
ping's counts, an error, an earlier run's answer's wrapper) stays a value:

- a session's view: `(version, body)`, the version for the ETag (a list once it has crossed Ray);
- an append's stored messages: the body, a JSON array;
- a list page: `{"keys", "views", "ends", "has_more"}`, each session's sort key, and all their
  views in one body, the i-th ending at `ends[i]`, so the gateway merges shards by key and
  slices the views it keeps (`page_items`).

Each body is `EncodedJSON`. The gateway builds its answers from them without parsing them again,
with the functions at the bottom (`json_array`, `json_object`, `only_element`): the one place
that joins or cuts encoded JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NewType

import orjson

from engine.errors import EngineError
from engine.idempotency import Idempotent, Replayed
from engine.sessions.ops import (
    AppendMessages,
    CreateSession,
    EndSession,
    ForkSession,
    GetSession,
    ListSessions,
    ReplaceContext,
    RequestSummary,
    UpdateSession,
)

EncodedJSON = NewType("EncodedJSON", bytes)
"""A JSON value encoded by orjson (compact, UTF-8) for the wire: sent as it is, never parsed again."""

_VIEWS = (CreateSession, ForkSession, GetSession, ReplaceContext, UpdateSession, EndSession, RequestSummary)


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
        return (result["version"], encoded(result))
    if isinstance(op, AppendMessages):
        return encoded(result)
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


def page_items(page: dict[str, Any]) -> list[tuple[Any, EncodedJSON]]:
    """A list page's (sort key, view body) pairs, newest first."""
    views, ends = page["views"], page["ends"]
    return [
        (key, EncodedJSON(views[start:end]))
        for key, start, end in zip(page["keys"], [0, *ends], ends, strict=False)
    ]


def encoded(value: Any) -> EncodedJSON:
    """The value as JSON, to join with others."""
    return EncodedJSON(orjson.dumps(value))


def json_array(items: Iterable[EncodedJSON]) -> EncodedJSON:
    """The array of these values."""
    return EncodedJSON(b"[" + b",".join(items) + b"]")


def json_object(**members: EncodedJSON) -> EncodedJSON:
    """The object of these members, in this order (their names are identifiers: nothing to escape)."""
    pairs = (b'"' + name.encode() + b'":' + value for name, value in members.items())
    return EncodedJSON(b"{" + b",".join(pairs) + b"}")


def only_element(array: EncodedJSON) -> EncodedJSON:
    """The one element of a one-element array: orjson writes no space around it, so it lies
    between the brackets."""
    if array[:1] != b"[" or array[-1:] != b"]":
        raise ValueError("not an encoded JSON array")
    return EncodedJSON(array[1:-1])

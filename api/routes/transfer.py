"""Export and import: an organization's sessions as NDJSON (engine.sessions.export,
docs/export.schema.json), out through GET /export and back in through POST /import.

Both stream. An export opens a cursor on every session shard at once (each cut at one log record,
named in the header's watermarks) and pulls it a page at a time, so neither the gateway nor a shard
holds the organization whole. An import reads its body a line at a time and sends each session, whole,
as one ImportSession op to its shard.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
from fastapi import Request
from starlette.responses import Response, StreamingResponse

from engine.config import LimitsConfig
from engine.errors import (
    EngineError,
    Forbidden,
    PayloadTooLarge,
    QuotaExceeded,
    ValidationFailed,
    unwrap,
)
from engine.routing import shard_share
from engine.sessions.codec import encode_session
from engine.sessions.export import (
    ImportedSession,
    ImportedVector,
    LineSplitter,
    StreamReader,
    encode_lines,
    end_line,
    header_line,
)
from engine.sessions.ops import CloseExport, ExportPage, ImportSession, OpenExport
from engine.sessions.session import is_session_id

from ..deps import Caller, CurrentCaller
from ..http import json_response, json_router
from ..limits import check_context, check_name, check_ttl
from ..schemas import ImportOut

IMPORT_PATH = "/import"
NDJSON = "application/x-ndjson"
PAGE_LINES = 1000  # lines a shard answers an export page with: bounds a page's memory and its time
MAX_OPEN_EXPORTS = 8  # export cursors a shard keeps open at once
MAX_ORG_EXPORTS = 2  # of them, one organization's: one tenant never holds them all
EXPORT_IDLE_MS = 5 * 60 * 1000  # an export cursor unused this long lapses (its client went)
KEEP_ALIVE_PAGES = 20  # pages of one shard between keep-alives to the shards still waiting
_EXPORT_BOUNDS = (MAX_OPEN_EXPORTS, EXPORT_IDLE_MS, MAX_ORG_EXPORTS)
_LINE_MARGIN = 64 * 1024  # an import line's fields besides its message or context

router = json_router("", "transfer")


async def _call(caller: Caller, shard: int, op: Any) -> Any:
    (result,) = await caller.shards.transport.call(shard, [op])
    return unwrap(result)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {}}, "description": "NDJSON lines: docs/export.schema.json."}},
    summary="Export this organization's sessions as NDJSON",
)
async def export_organization(request: Request, caller: CurrentCaller) -> Response:
    # `request` keeps this route on FastAPI's own handler: a streamed answer is not the fast path's.
    del request
    export_id = uuid.uuid4().hex
    shards = range(caller.shards.shards)
    opened = await asyncio.gather(
        *(
            _call(
                caller,
                s,
                OpenExport(caller.org, export_id, MAX_OPEN_EXPORTS, EXPORT_IDLE_MS, MAX_ORG_EXPORTS),
            )
            for s in shards
        ),
        return_exceptions=True,
    )
    failed = [result for result in opened if isinstance(result, BaseException)]
    if failed:
        await _close(caller, export_id)
        raise failed[0]
    watermarks = {
        f"session-{s}": cast(dict[str, int], result)["watermark"] for s, result in enumerate(opened)
    }
    header = header_line(caller.org, int(time.time() * 1000), watermarks)
    return StreamingResponse(_export_lines(caller, export_id, header), media_type=NDJSON)


async def _export_lines(caller: Caller, export_id: str, header: dict[str, Any]) -> AsyncIterator[bytes]:
    sessions = messages = 0
    try:
        yield encode_lines([header])
        for shard in range(caller.shards.shards):
            done = False
            pages = 0
            while not done:
                pages += 1
                if pages % KEEP_ALIVE_PAGES == 0:
                    await _keep_alive(caller, export_id, range(shard + 1, caller.shards.shards))
                page = await _call(caller, shard, ExportPage(caller.org, export_id, PAGE_LINES))
                for line in page["lines"]:
                    if line["kind"] == "session":
                        sessions += 1
                    else:
                        messages += 1
                done = page["done"]
                yield encode_lines(page["lines"])
        # No vector lines: the organization's vectors are not exported yet (engine.sessions.export
        # reads them; nothing writes them).
        yield encode_lines([end_line(sessions, messages, 0)])
    finally:
        # A stream cut off (its client gone) leaves no cursor behind to pin the copies it keeps:
        # shielded, since the cut cancels this task and would cancel the close with it.
        with anyio.CancelScope(shield=True):
            await _close(caller, export_id)


async def _keep_alive(caller: Caller, export_id: str, shards: range) -> None:
    """Touch the cursors still waiting for their turn, so none lapses while another shard pages."""
    await asyncio.gather(*(_call(caller, s, ExportPage(caller.org, export_id, 0)) for s in shards))


async def _close(caller: Caller, export_id: str) -> None:
    await asyncio.gather(
        *(_call(caller, s, CloseExport(caller.org, export_id)) for s in range(caller.shards.shards)),
        return_exceptions=True,
    )


@router.post(
    IMPORT_PATH,
    response_model=ImportOut,
    summary="Import sessions from an export (NDJSON); a session whose id exists is skipped",
    openapi_extra={"requestBody": {"required": True, "content": {NDJSON: {"schema": {"type": "string"}}}}},
)
async def import_organization(request: Request, caller: CurrentCaller) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != NDJSON:
        raise ValidationFailed(
            f"an import's body is NDJSON: Content-Type must be {NDJSON}", {"field": "Content-Type"}
        )
    reader = StreamReader()
    imported = {"sessions": 0, "messages": 0, "vectors": 0}
    skipped = 0
    errors: list[dict[str, Any]] = []
    async for raw in _body_lines(request, caller.limits):
        for item in reader.push(raw):
            if isinstance(item, ImportedSession):
                result = await _import_session(caller, item)
                if isinstance(result, EngineError):
                    errors.append({"line": item.line, "session_id": item.id, "error": str(result)})
                elif result is None:
                    skipped += 1
                else:
                    imported["sessions"] += 1
                    imported["messages"] += len(item.messages)
            elif isinstance(item, ImportedVector):
                errors.append({"line": item.line, "error": "vectors are not imported"})
            elif item["kind"] == "header" and item["org"] != caller.org:
                raise Forbidden(
                    f"line {reader.number}: the export is of organization {item['org']!r}, not yours",
                    {"line": reader.number},
                    "A tenant imports into its own organization only.",
                )
    reader.finish()
    return json_response({"imported": imported, "skipped": skipped, "errors": errors})


async def _import_session(caller: Caller, item: ImportedSession) -> Any:
    if not is_session_id(item.id):
        return ValidationFailed(
            f"line {item.line}: {item.id[:64]!r} is not a session id", {"line": item.line}
        )
    try:
        _check_limits(item, caller.limits)
        session = item.to_session(caller.org)
        max_active = shard_share(caller.limits.max_active_sessions, caller.shards.shards)
        op = ImportSession(caller.org, session.id, encode_session(session), max_active)
        return await caller.shards.submit(caller.org, session.id, op)
    except EngineError as refused:
        return refused


def _check_limits(item: ImportedSession, limits: LimitsConfig) -> None:
    """The caller's limits, as a create and its appends would be held to them; each refusal names
    the session's line."""
    r = item.record
    try:
        check_name(r["name"], limits)
        check_ttl(r["ttl_seconds"], limits)
        check_context(r["context"], limits)
        count = len(item.messages)
        if limits.max_messages_per_session is not None and count > limits.max_messages_per_session:
            raise QuotaExceeded(
                "max_messages_per_session",
                limits.max_messages_per_session,
                "The session has more messages than this organization's sessions may hold.",
            )
        for m in item.messages:
            if len(m["content"].encode()) > limits.max_message_bytes:
                raise PayloadTooLarge(
                    f"message {m['seq']}'s content is over {limits.max_message_bytes} bytes",
                    {"field": "content", "seq": m["seq"], "limit_bytes": limits.max_message_bytes},
                )
    except EngineError as refused:
        refused.details["line"] = item.line
        raise


async def _body_lines(request: Request, limits: LimitsConfig) -> AsyncIterator[bytes]:
    """The body's lines as they arrive; PayloadTooLarge past `limits.max_import_bytes` bytes (a body
    without a Content-Length is counted here) or for a line longer than any export writes."""
    limit = limits.max_import_bytes
    splitter = LineSplitter(max_import_line_bytes(limits))
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge("the import is too large", {"limit_bytes": limit})
        for line in splitter.push(chunk):
            yield line
    last = splitter.finish()
    if last is not None:
        yield last


def max_import_line_bytes(limits: LimitsConfig) -> int:
    """The longest line an import takes. A line holds one message, or one session with its context;
    each came in through a request body (max_body_bytes) or within its own limit, and the margin
    holds the fields around them."""
    return max(limits.max_body_bytes, limits.max_message_bytes + limits.max_context_bytes) + _LINE_MARGIN

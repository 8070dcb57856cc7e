"""Export and import: an organization's sessions and vectors as NDJSON (engine.sessions.export,
docs/export.schema.json), out through GET /export and back in through POST /import.

The routes adapt HTTP to engine.transfer, which drives the shards (the operator's
`session-engine export` and `import` drive them the same way): the export streams its cursors'
pages as they come, the import reads its body a line at a time.
"""

from __future__ import annotations

import time

import anyio
from fastapi import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from engine.errors import ValidationFailed
from engine.transfer.exporting import Export, open_export
from engine.transfer.importing import Importer, Limits, stream_lines
from engine.transfer.routes import Routes

from ..deps import Caller, CurrentCaller
from ..http import json_response, json_router
from ..schemas import ImportOut

IMPORT_PATH = "/import"
NDJSON = "application/x-ndjson"

router = json_router("", "transfer")


class ExportResponse(StreamingResponse):
    """An export's stream whose cursors are closed however the response ends. The stream closes
    them when it ends or is cut off, but Starlette never starts it if the client has gone before
    the response begins (the first send fails), so this closes them too."""

    def __init__(self, export: Export) -> None:
        super().__init__(export.lines(), media_type=NDJSON)
        self.export = export

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # a disconnect cancels this task, not the close
                await self.export.close()


def _routes(caller: Caller) -> Routes:
    """The shards through this gateway's transports (cursors) and outboxes (an import's ops)."""
    shards, memory = caller.shards, caller.memory
    return Routes(shards.transport, memory.transport, shards.submit, memory.submit)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {}}, "description": "NDJSON lines: docs/export.schema.json."}},
    summary="Export this organization's sessions and vectors as NDJSON",
)
async def export_organization(request: Request, caller: CurrentCaller) -> Response:
    # `request` keeps this route on FastAPI's own handler: a streamed answer is not the fast path's.
    del request
    export = await open_export(_routes(caller), caller.org, int(time.time() * 1000))
    return ExportResponse(export)


@router.post(
    IMPORT_PATH,
    response_model=ImportOut,
    summary="Import sessions and vectors from an export (NDJSON); an id the organization holds is skipped",
    openapi_extra={"requestBody": {"required": True, "content": {NDJSON: {"schema": {"type": "string"}}}}},
)
async def import_organization(request: Request, caller: CurrentCaller) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != NDJSON:
        raise ValidationFailed(
            f"an import's body is NDJSON: Content-Type must be {NDJSON}", {"field": "Content-Type"}
        )
    limits = Limits(caller.limits, caller.memory_limits)
    importer = Importer(_routes(caller), lambda org: limits, caller.org, any_source=False)
    async for raw in stream_lines(request.stream(), limits):
        await importer.push(raw)
    return json_response(importer.finish())

"""An export: a cursor opened on every session shard and on the organization's memory shard at
once (each cut at one log record, named in the header's watermarks), then pulled a page at a time
(sessions shard after shard, then the vectors), so neither the caller nor a shard holds the
organization whole. Every cursor is closed when the stream ends or is cut off.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio

from engine.memory.ops import CloseVectorExport, OpenVectorExport, VectorExportPage
from engine.routing import memory_shard_for
from engine.sessions.export import encode_lines, end_line, header_line
from engine.sessions.ops import CloseExport, ExportPage, OpenExport

from .routes import Routes, Shards, call

PAGE_LINES = 1000  # lines a session shard answers an export page with: bounds a page's memory and its time
# A vector line holds up to limits' max_dimension numbers, far more than a message line.
VECTOR_PAGE_LINES = 100
MAX_OPEN_EXPORTS = 8  # export cursors a shard keeps open at once
MAX_ORG_EXPORTS = 2  # of them, one organization's: one tenant never holds them all
EXPORT_IDLE_MS = 5 * 60 * 1000  # an export cursor unused this long lapses (its client went)
KEEP_ALIVE_PAGES = 20  # pages of one shard between keep-alives to the shards still waiting


class Export:
    """An export whose cursors are open: `lines()` streams it, and closes them when done."""

    def __init__(self, routes: Routes, org: str, export_id: str, header: dict[str, Any]) -> None:
        self.routes = routes
        self.org = org
        self.export_id = export_id
        self.header = header
        self.memory_shard = memory_shard_for(org, routes.memory.shards)
        self.counts = {"session": 0, "message": 0, "vector": 0}  # the lines streamed so far, by kind
        self._closed = False

    async def lines(self) -> AsyncGenerator[bytes, None]:
        """The header, each session shard's sessions and messages, the vectors, the end line."""
        counts = self.counts
        org, export_id, sessions = self.org, self.export_id, self.routes.sessions
        vectors: _Cursor = (self.routes.memory, self.memory_shard)
        try:
            yield encode_lines([self.header])
            for shard in range(sessions.shards):
                later = range(shard + 1, sessions.shards)
                waiting: list[tuple[_Cursor, Any]] = [
                    ((sessions, s), ExportPage(org, export_id, 0)) for s in later
                ]
                waiting.append((vectors, VectorExportPage(org, export_id, 0)))
                page = ExportPage(org, export_id, PAGE_LINES)
                async for lines in _pages((sessions, shard), page, waiting):
                    yield _counted(lines, counts)
            async for lines in _pages(vectors, VectorExportPage(org, export_id, VECTOR_PAGE_LINES), []):
                yield _counted(lines, counts)
            yield encode_lines([end_line(counts["session"], counts["message"], counts["vector"])])
        finally:
            # A stream cut off (its client gone) leaves no cursor behind to pin the copies it keeps:
            # shielded, since the cut cancels this task and would cancel the close with it.
            with anyio.CancelScope(shield=True):
                await self.close()

    async def close(self) -> None:
        """Close every cursor of the export (once: a second close sends nothing)."""
        if not self._closed:
            self._closed = True
            await _close(self.routes, self.org, self.export_id, self.memory_shard)


_Cursor = tuple[Shards, int]  # a kind's shards, and the one that holds the cursor


async def _pages(
    cursor: _Cursor, page: Any, waiting: list[tuple[_Cursor, Any]]
) -> AsyncIterator[list[dict[str, Any]]]:
    """One cursor's pages until it is done. Every KEEP_ALIVE_PAGES pages the cursors still waiting
    for their turn are touched (a page of 0 lines), so none lapses while this one pages."""
    pages = 0
    while True:
        pages += 1
        if pages % KEEP_ALIVE_PAGES == 0 and waiting:
            await asyncio.gather(*(call(shards, shard, keep) for (shards, shard), keep in waiting))
        answer = await call(*cursor, page)
        yield answer["lines"]
        if answer["done"]:
            return


def _counted(lines: list[dict[str, Any]], counts: dict[str, int]) -> bytes:
    for line in lines:
        counts[line["kind"]] += 1
    return encode_lines(lines)


async def open_export(routes: Routes, org: str, exported_at_ms: int) -> Export:
    """Open the organization's cursors on every session shard and on its memory shard; if any
    refuses (Unavailable past its bounds), close those that opened and raise that refusal."""
    export_id = uuid.uuid4().hex
    bounds = (MAX_OPEN_EXPORTS, EXPORT_IDLE_MS, MAX_ORG_EXPORTS)
    memory_shard = memory_shard_for(org, routes.memory.shards)
    opened: list[Any] = await asyncio.gather(
        *(
            call(routes.sessions, s, OpenExport(org, export_id, *bounds))
            for s in range(routes.sessions.shards)
        ),
        call(routes.memory, memory_shard, OpenVectorExport(org, export_id, *bounds)),
        return_exceptions=True,
    )
    failed = [result for result in opened if isinstance(result, BaseException)]
    if failed:
        await _close(routes, org, export_id, memory_shard)
        raise failed[0]
    *sessions, memory = opened
    watermarks = {f"session-{s}": result["watermark"] for s, result in enumerate(sessions)}
    watermarks[f"memory-{memory_shard}"] = memory["watermark"]
    return Export(routes, org, export_id, header_line(org, exported_at_ms, watermarks))


async def _close(routes: Routes, org: str, export_id: str, memory_shard: int) -> None:
    closes: list[tuple[Shards, int, Any]] = [
        (routes.sessions, s, CloseExport(org, export_id)) for s in range(routes.sessions.shards)
    ]
    closes.append((routes.memory, memory_shard, CloseVectorExport(org, export_id)))
    await asyncio.gather(*(call(shards, s, op) for shards, s, op in closes), return_exceptions=True)

"""GET /export's response closes the export's cursors however it ends, including a client gone
before the response began (Starlette then never starts the stream, so its own close never runs)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from api.routes.transfer import ExportResponse
from engine.transfer.exporting import open_export
from tests.unit.transfer.test_transfer import fill, open_counts, routes


@pytest.mark.parametrize("spec_version", ["2.0", "2.4"])
async def test_an_export_whose_client_went_before_the_response_began_closes_its_cursors(
    spec_version: str,
) -> None:
    r, sessions, memory = routes()
    await fill(r, "acme", 10)
    export = await open_export(r, "acme", 0)
    assert await open_counts(sessions, memory) == [1, 1, 1]

    async def send(message: Any) -> None:
        raise OSError("the client went away")

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"spec_version": spec_version}}
    with pytest.raises((OSError, ClientDisconnect)):
        await ExportResponse(export)(scope, receive, send)
    assert await open_counts(sessions, memory) == [0, 0, 0]


async def test_an_export_streamed_whole_closes_its_cursors_once() -> None:
    r, sessions, memory = routes()
    await fill(r, "acme", 10)
    export = await open_export(r, "acme", 0)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    await ExportResponse(export)(scope, receive, send)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    memory.sent.clear()
    await export.close()  # already closed by the stream's end: nothing sent again
    assert memory.sent == []
    assert await open_counts(sessions, memory) == [0, 0, 0]

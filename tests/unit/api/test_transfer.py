"""GET /export's response closes the export's cursors however it ends, including a client gone
before the response began (Starlette then never starts the stream, so its own close never runs);
POST /import stopped by a shard that cannot answer is that shard's 503, not a refused line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from starlette.requests import ClientDisconnect

from api.routes.transfer import NDJSON, ExportResponse
from engine.errors import Unavailable
from engine.memory.ops import ImportVectors
from engine.transfer.exporting import open_export
from tests.support.local_shards import LocalMemoryTransport
from tests.unit.api.apps import AUTH, app_in_process
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


class RestartingMemory(LocalMemoryTransport):
    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]:
        if any(isinstance(op, ImportVectors) for op in ops):
            return [Unavailable(f"memory shard {shard} is restarting") for _ in ops]
        return await super().call(shard, ops)


def test_an_import_a_shard_cannot_take_is_503_with_its_hint() -> None:
    app = app_in_process(memory=RestartingMemory)
    header = {"kind": "header", "format": "session-engine-export", "version": 1, "org": "acme"}
    vector = {"kind": "vector", "namespace": "a", "id": "x", "values": [1.0], "text": None, "metadata": {}}
    end = {"kind": "end", "sessions": 0, "messages": 0, "vectors": 1}
    lines = [{**header, "exported_at": 0, "watermarks": {}}, vector, end]
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    with TestClient(app) as client:
        answer = client.post("/import", content=body, headers={**AUTH, "Content-Type": NDJSON})
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "UNAVAILABLE" and answer.json()["hint"] == Unavailable.hint
    assert "restarting" in answer.json()["error"]

"""The client's export and import_sessions, sync and async, against a real gateway: an export
written to a file imports back after the sessions are deleted, and a second import skips them."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from session_engine_client import AsyncClient, Client, NotFound

pytestmark = pytest.mark.integration


def test_an_export_to_a_file_imports_back(gateway: dict[str, Any], key: str, tmp_path: Path) -> None:
    dump = tmp_path / "acme.ndjson"
    with Client(key, gateway["server"].url) as engine:
        session = engine.create_session("trip", context={"day": 1})
        engine.append_message(session.id, "user", "Lisbon, three days")
        assert engine.export(dump) == dump.stat().st_size > 0
        engine.delete_session(session.id)
        with pytest.raises(NotFound):
            engine.get_session(session.id)
        result = engine.import_sessions(dump)
        assert (result.imported.sessions, result.imported.messages, result.skipped) == (1, 1, 0)
        assert engine.get_session(session.id).messages[0].content == "Lisbon, three days"
        with dump.open("rb") as again:
            assert engine.import_sessions(again).skipped == 1


def test_the_async_client_exports_into_a_file_object(gateway: dict[str, Any], key: str) -> None:
    async def run() -> None:
        async with AsyncClient(key, gateway["server"].url) as engine:
            session = await engine.create_session("trip")
            out = io.BytesIO()
            assert await engine.export(out) > 0
            await engine.delete_session(session.id)
            result = await engine.import_sessions(io.BytesIO(out.getvalue()))
            assert result.imported.sessions == 1
            assert (await engine.get_session(session.id)).name == "trip"

    asyncio.run(run())

"""`session-engine export` and `import` over shards in this process (their Ray lookup replaced):
an export file appears whole or not at all, an empty organization is a note, a file that cannot
be read is its own line, an import without --org is held to the header organization's limits,
and each outcome has its exit code."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from engine.config import EngineConfig, LimitsConfig, MemoryConfig, OrgLimits
from engine.errors import Unavailable
from engine.memory.index import IndexParams
from engine.memory.ops import VectorExportPage
from engine.sessions.ops import AppendMessages, CreateSession
from engine.sessions.session import NewMessage
from engine.transfer.routes import Routes
from session_engine import transfer
from tests.support.local_shards import LocalMemoryTransport, LocalTransport

SESSION = f"sess_{1:032x}"
LONG = 100_000  # bytes of one message: past the default organization's line cap, within acme's
CONFIG = EngineConfig(
    limits=LimitsConfig(
        max_body_bytes=1024,
        max_message_bytes=1024,
        max_context_bytes=1024,
        orgs={"acme": OrgLimits(max_message_bytes=2 * LONG)},
    ),
    memory=MemoryConfig(max_dimension=8, max_text_chars=100, max_metadata_bytes=1000),
)


class Memory(LocalMemoryTransport):
    def __init__(self, *, fail_pages: bool = False) -> None:
        super().__init__(1, IndexParams(), embed=lambda texts: np.zeros((len(texts), 3)))
        self.fail_pages = fail_pages

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]:
        if self.fail_pages and any(isinstance(op, VectorExportPage) and op.max_lines for op in ops):
            return [Unavailable("memory shard 0 is restarting") for _ in ops]
        return await super().call(shard, ops)


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch) -> Memory:
    """The shards the commands reach, acme holding one session with a long message."""
    shards = Memory()
    routes = Routes.direct(LocalTransport(1), shards)
    monkeypatch.setattr(transfer, "_routes", lambda config: routes)
    sessions = routes.sessions
    create = CreateSession("acme", SESSION, "long", 60, {})
    append = AppendMessages("acme", SESSION, (NewMessage("user", "x" * LONG),))
    for op in (create, append):
        (answer,) = transfer.asyncio.run(sessions.call(0, [op]))
        assert not isinstance(answer, Exception)
    return shards


def export(org: str, output: Path) -> int:
    return transfer.export_command(argparse.Namespace(org=org, output=str(output)), CONFIG)


def imports(file: Path | str, org: str | None = None) -> int:
    return transfer.import_command(argparse.Namespace(file=str(file), org=org), CONFIG)


def test_an_export_file_appears_whole_and_an_import_without_org_takes_its_header_limits(
    memory: Memory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "acme.ndjson"
    assert export("acme", out) == transfer.OK
    assert [p.name for p in tmp_path.iterdir()] == ["acme.ndjson"]
    assert orjson.loads(out.read_bytes().splitlines()[-1])["messages"] == 1
    # Its long line fits acme's limits (read from the header), not the defaults': all held, skipped.
    assert imports(out) == transfer.OK
    assert orjson.loads(capsys.readouterr().out)["skipped"] == 1
    assert imports(out, "beta") == transfer.REFUSED  # beta's limits: the line is too long
    assert "line 3 is longer than" in capsys.readouterr().err


def test_an_export_that_fails_leaves_no_file_and_the_previous_one_whole(
    memory: Memory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "acme.ndjson"
    out.write_bytes(b"the previous export")
    memory.fail_pages = True
    assert export("acme", out) == transfer.UNAVAILABLE
    assert capsys.readouterr().err == "session-engine export: memory shard 0 is restarting\n"
    assert [p.name for p in tmp_path.iterdir()] == ["acme.ndjson"]
    assert out.read_bytes() == b"the previous export"


def test_an_export_into_a_missing_folder_says_it_cannot_write(
    memory: Memory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export("acme", tmp_path / "nowhere" / "acme.ndjson") == transfer.REFUSED
    assert "cannot write" in capsys.readouterr().err
    assert export("acme", tmp_path) == transfer.REFUSED
    assert "Is a directory" in capsys.readouterr().err


def test_an_organization_holding_nothing_exports_with_a_note(
    memory: Memory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export("nobody", tmp_path / "nobody.ndjson") == transfer.OK
    assert capsys.readouterr().err == "session-engine export: organization nobody holds nothing here\n"


@pytest.mark.parametrize(("name", "reason"), [("missing.ndjson", "No such file"), (".", "Is a directory")])
def test_an_import_file_that_cannot_be_read_is_one_line(
    memory: Memory, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, reason: str
) -> None:
    assert imports(tmp_path / name) == transfer.REFUSED
    said = capsys.readouterr().err
    assert said.startswith(f"session-engine import: cannot read {tmp_path / name}: {reason}")
    assert said.count("\n") == 1 and "free space" not in said.lower()


def test_an_import_a_shard_cannot_take_exits_unavailable(
    memory: Memory, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "acme.ndjson"
    assert export("acme", out) == transfer.OK

    async def refuse(org: str, session_id: str, op: Any) -> Any:
        raise Unavailable("shard 0 is not answering")

    routes = transfer._routes(CONFIG)
    gone = Routes(routes.sessions, routes.memory, refuse, routes.submit_memory)
    monkeypatch.setattr(transfer, "_routes", lambda config: gone)
    assert imports(out) == transfer.UNAVAILABLE
    assert capsys.readouterr() == ("", "session-engine import: shard 0 is not answering\n")

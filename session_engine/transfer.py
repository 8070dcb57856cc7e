"""`session-engine export` and `import`: an organization out of, or into, a running cluster, in the
format GET /export and POST /import use (docs/export.schema.json). They join the cluster's Ray as
the other operator commands do (session_engine.operate), need no API key, and drive the shards
through engine.transfer as the gateway does; `import --org` takes another organization's export.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from engine.config import EngineConfig
from engine.errors import EngineError, PayloadTooLarge, ValidationFailed
from engine.transfer.exporting import open_export
from engine.transfer.importing import Importer, Limits, stream_lines
from engine.transfer.routes import Routes

from .operate import _operator

CHUNK_BYTES = 1 << 20  # an import file is read this much at a time


def add_commands(commands: Any) -> None:
    """The two commands, with the options every operator command takes."""
    export = commands.add_parser(
        "export",
        help="write an organization's sessions and vectors as NDJSON (as GET /export does)",
        description="Streams the organization from every shard, each cut at one moment. Exits 0.",
    )
    export.add_argument("--org", required=True, help="the organization to export")
    export.add_argument("--output", default="-", help="the file to write (default -: standard output)")
    export.set_defaults(func=export_organization, command="export")
    imports = commands.add_parser(
        "import",
        help="import an export (as POST /import does); an id the organization holds is skipped",
        description="Prints the answer as JSON. Exits 0, 1 when a session or vector was refused "
        "(in the answer's errors), 2 when the stream itself is refused (the line on stderr).",
    )
    imports.add_argument("file", metavar="FILE", help="the export to read (-: standard input)")
    imports.add_argument("--org", help="import into this organization (default: the export's)")
    imports.set_defaults(func=import_organization, command="import")
    for command in (export, imports):
        command.add_argument("--config", type=Path)
        command.add_argument(
            "--data-dir", type=Path, help="an embedded server's data directory (default ./data)"
        )
        command.add_argument(
            "--ray-address", help="the cluster's Ray: 'auto' on a cluster node, or host:port"
        )


class _MemoryShards:
    """The memory shards alone (engine.transfer.routes.Shards): nothing here is embedded."""

    def __init__(self, actors: Any) -> None:
        self._actors = actors  # engine.runtime.ray_actors.NamedActors

    @property
    def shards(self) -> int:
        return len(self._actors)

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]:
        answers: list[Any] = await self._actors.call(shard, ops, "memory shard")
        return answers


def _routes(config: EngineConfig) -> Routes:
    # Ray only once the command runs (session_engine.operate's docstring says why).
    from engine.runtime import memory_shards, session_shards, transports

    sessions = transports.RaySessionTransport(session_shards.find_shards(config))
    return Routes.direct(sessions, _MemoryShards(memory_shards.find_memory_shards(config)))


@_operator
def export_organization(args: argparse.Namespace, config: EngineConfig) -> int:
    async def write(out: IO[bytes]) -> None:
        export = await open_export(_routes(config), args.org, int(time.time() * 1000))
        async for chunk in export.lines():
            out.write(chunk)

    try:
        if args.output == "-":
            asyncio.run(write(sys.stdout.buffer))
            sys.stdout.buffer.flush()
        else:
            with Path(args.output).open("wb") as out:
                asyncio.run(write(out))
    except EngineError as exc:
        print(f"session-engine export: {exc}", file=sys.stderr)
        return 1
    return 0


@_operator
def import_organization(args: argparse.Namespace, config: EngineConfig) -> int:
    def limits_for(org: str) -> Limits:
        return Limits(config.limits.for_org(org), config.memory)

    async def read(source: IO[bytes]) -> dict[str, Any]:
        importer = Importer(_routes(config), limits_for, args.org, any_source=True)
        async for line in stream_lines(_chunks(source), limits_for(args.org or "")):
            await importer.push(line)
        return importer.finish()

    try:
        if args.file == "-":
            answer = asyncio.run(read(sys.stdin.buffer))
        else:
            with Path(args.file).open("rb") as source:
                answer = asyncio.run(read(source))
    except FileNotFoundError:
        print(f"session-engine import: {args.file}: no such file", file=sys.stderr)
        return 2
    except (ValidationFailed, PayloadTooLarge) as exc:  # a bad line (its number), a stream too large
        print(f"session-engine import: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:  # the shards not found, say
        print(f"session-engine import: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(answer).decode())
    return 1 if answer["errors"] else 0


async def _chunks(source: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := source.read(CHUNK_BYTES):
        yield chunk

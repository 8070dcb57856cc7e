"""`session-engine export` and `import`: an organization out of, or into, a running cluster, in the
format GET /export and POST /import use (docs/export.schema.json). They join the cluster's Ray as
the other operator commands do (session_engine.operate), need no API key, and drive the shards
through engine.transfer as the gateway does; `import --org` takes another organization's export.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import orjson

from engine.config import EngineConfig
from engine.errors import EngineError, Internal, ServerFault, Unavailable
from engine.transfer.exporting import open_export
from engine.transfer.importing import Importer, Limits, max_import_line_bytes, stream_lines
from engine.transfer.routes import Routes

from .operate import _operator, add_cluster_options

CHUNK_BYTES = 1 << 20  # an import file is read this much at a time

# Exit codes. A cluster not found at all is 2, as for every operator command (session_engine.operate);
# a shard of it missing or not answering is 3, as `status` exits when an actor is not serving.
OK = 0
REFUSED_LINES = 1  # import: some sessions or vectors refused (the answer's errors)
OUTPUT_CLOSED = 1  # export: standard output closed before the end
REFUSED = 2  # the stream refused (a bad line), a file that cannot be read or written, bad usage
UNAVAILABLE = 3  # a shard missing, restarting or not answering: retry


def add_commands(commands: Any) -> None:
    """The two commands, with the options every operator command takes."""
    export = commands.add_parser(
        "export",
        help="write an organization's sessions and vectors as NDJSON (as GET /export does)",
        description="Streams the organization from every shard, each cut at one moment. --output is "
        "written under a temporary name beside it and renamed when the export is whole. Exits 0 (an "
        "organization holding nothing here is a note on stderr), 1 when standard output is closed "
        "early, 2 when the output cannot be written, 3 when a shard is missing or not answering.",
    )
    export.add_argument("--org", required=True, help="the organization to export")
    export.add_argument("--output", default="-", help="the file to write (default -: standard output)")
    export.set_defaults(func=export_organization, command="export")
    imports = commands.add_parser(
        "import",
        help="import an export (as POST /import does); an id the organization holds is skipped",
        description="Prints the answer as JSON. Exits 0, 1 when a session or vector was refused "
        "(in the answer's errors), 2 when the stream itself is refused or FILE cannot be read (the "
        "line on stderr), 3 when a shard is missing or not answering.",
    )
    imports.add_argument("file", metavar="FILE", help="the export to read (-: standard input)")
    imports.add_argument("--org", help="import into this organization (default: the export's)")
    imports.set_defaults(func=import_organization, command="import")
    for command in (export, imports):
        add_cluster_options(command)


def _routes(config: EngineConfig) -> Routes:
    # Ray only once the command runs (session_engine.operate's docstring says why).
    from engine.runtime import memory_shards, ray_actors, session_shards, transports

    sessions = transports.RaySessionTransport(session_shards.find_shards(config))
    # No embedders: an export or an import embeds nothing (a vector line carries its values).
    memory = transports.RayMemoryTransport(
        config, memory_shards.find_memory_shards(config), ray_actors.NamedActors([], config, [])
    )
    return Routes.direct(sessions, memory)


def export_command(args: argparse.Namespace, config: EngineConfig) -> int:
    from ray.exceptions import RayError  # Ray only once the command runs (session_engine.operate)

    try:
        if args.output == "-":
            counts = asyncio.run(_export(config, args.org, sys.stdout.buffer))
            sys.stdout.buffer.flush()
        else:
            counts = _export_to_file(config, args.org, Path(args.output))
    except BrokenPipeError:
        # The reader went away (`export | head`): as `git log | head`, nothing to say. Standard
        # output points at nothing from here, so the interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OUTPUT_CLOSED
    except OSError as exc:  # the output's folder missing or read-only, the disk full
        return _failed("export", f"cannot write {args.output}: {exc.strerror or exc}", REFUSED)
    except (EngineError, RayError) as exc:
        return _failed("export", _last_line(exc), _exit_code(exc))
    if not any(counts.values()):
        print(f"session-engine export: organization {args.org} holds nothing here", file=sys.stderr)
    return OK


def _export_to_file(config: EngineConfig, org: str, path: Path) -> dict[str, int]:
    """Written under a temporary name beside `path` and renamed once whole, so an export that fails
    leaves no partial file (and never half-overwrites an earlier one)."""
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory")
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as out:
            counts = asyncio.run(_export(config, org, out))
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return counts


async def _export(config: EngineConfig, org: str, out: IO[bytes]) -> dict[str, int]:
    """Write the export; the lines of each kind written."""
    export = await open_export(_routes(config), org, int(time.time() * 1000))
    async with contextlib.aclosing(export.lines()) as lines:  # closes the cursors if a write fails
        async for chunk in lines:
            out.write(chunk)
    return export.counts


def import_command(args: argparse.Namespace, config: EngineConfig) -> int:
    from ray.exceptions import RayError  # Ray only once the command runs (session_engine.operate)

    try:
        with _opened(args.file) as source:
            answer = asyncio.run(_import(config, args.org, source))
    except OSError as exc:  # missing, a directory, unreadable
        return _failed("import", f"cannot read {args.file}: {exc.strerror or exc}", REFUSED)
    except (EngineError, RayError) as exc:  # a bad line (its number), too large, a shard not answering
        return _failed("import", _last_line(exc), _exit_code(exc))
    print(orjson.dumps(answer).decode())
    return REFUSED_LINES if answer["errors"] else OK


export_organization = _operator(export_command)
import_organization = _operator(import_command)


def _opened(file: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    if file == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    return Path(file).open("rb")


async def _import(config: EngineConfig, into: str | None, source: IO[bytes]) -> dict[str, Any]:
    """Import the stream into `into`, or, if None, into the organization its header names, held to
    that organization's limits (max_import_bytes included): the header line is read first for it."""

    def limits_for(org: str) -> Limits:
        return Limits(config.limits.for_org(org), config.memory)

    first = source.readline(max_import_line_bytes(limits_for(into or "")))
    importer = Importer(_routes(config), limits_for, into, any_source=True)
    async for line in stream_lines(_chunks(first, source), limits_for(into or _header_org(first))):
        await importer.push(line)
    return importer.finish()


def _header_org(first: bytes) -> str:
    """The organization a header line names; "" if it is no header (the importer refuses it)."""
    with contextlib.suppress(orjson.JSONDecodeError):
        header = orjson.loads(first)
        org = header.get("org") if isinstance(header, dict) else None
        if isinstance(org, str):
            return org
    return ""


async def _chunks(first: bytes, source: IO[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    while chunk := source.read(CHUNK_BYTES):
        yield chunk


def _exit_code(exc: Exception) -> int:
    """A refusal of the stream or of the command is REFUSED; a shard that cannot serve it (or Ray
    that cannot reach one) is UNAVAILABLE."""
    refused = isinstance(exc, EngineError) and not isinstance(exc, Unavailable | Internal | ServerFault)
    return REFUSED if refused else UNAVAILABLE


def _last_line(exc: Exception) -> str:
    """An error in one line: Ray's own end in their cause, after a traceback."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1]


def _failed(command: str, why: str, code: int) -> int:
    print(f"session-engine {command}: {why}", file=sys.stderr)
    return code

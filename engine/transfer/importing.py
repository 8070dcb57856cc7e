"""An import: a stream's lines read one at a time (engine.sessions.export.StreamReader), each
session sent whole as one ImportSession to its shard, the vectors sent in batches of one namespace
and one dimension as ImportVectors to the organization's memory shard. Every session and vector is
held to the importer's limits as a create, an append or an upsert would be. A session or a vector
whose id the organization holds already is skipped; one refused is in the answer's errors with its
line (the first MAX_ERRORS of them, the rest counted), and the rest go on. A bad or misplaced line
stops the import (BadLine, with its number), and so does a shard that cannot answer (Unavailable,
Internal, a ServerFault): that is no refusal of a line, and every line after it would meet it too.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.config import LimitsConfig, MemoryConfig
from engine.errors import (
    EngineError,
    Forbidden,
    Internal,
    PayloadTooLarge,
    QuotaExceeded,
    ServerFault,
    Unavailable,
    ValidationFailed,
)
from engine.limits import check_context, check_name, check_namespace, check_ttl, check_vector
from engine.memory.index import normalized
from engine.memory.ops import ImportVectors
from engine.routing import shard_share
from engine.sessions.codec import encode_session
from engine.sessions.export import ImportedSession, ImportedVector, LineSplitter, StreamReader
from engine.sessions.ops import ImportSession
from engine.sessions.session import is_session_id

from .routes import Routes

VECTOR_BATCH = 256  # vectors an ImportVectors carries at most: one log record's worth, not a file's
MAX_ERRORS = 1000  # refused lines an answer lists; past them it counts them (errors_omitted)
_LINE_MARGIN = 64 * 1024  # an import line's fields besides its message, context or vector


@dataclass(frozen=True, slots=True)
class Limits:
    """What an import is held to: the importer's limits (limits.orgs applied) and memory's."""

    sessions: LimitsConfig
    memory: MemoryConfig


@dataclass(slots=True)
class _Vector:
    line: int
    id: str
    row: np.ndarray
    metadata: dict[str, Any]
    text: str | None


@dataclass(slots=True)
class Answer:
    imported: dict[str, int] = field(default_factory=lambda: {"sessions": 0, "messages": 0, "vectors": 0})
    skipped: int = 0  # sessions and vectors whose id the organization held already
    errors: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_ERRORS refused lines
    errors_omitted: int = 0  # refused lines past them

    def refused(self, error: dict[str, Any]) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(error)
        else:
            self.errors_omitted += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "skipped": self.skipped,
            "errors": self.errors,
            "errors_omitted": self.errors_omitted,
        }


class Importer:
    """`push` each line of the stream, then `finish` for the answer. `into`: the organization to
    import into; None: the one the header names. `limits_for`: an organization's limits.
    `any_source`: whether a stream exported from another organization may be imported (the
    operator's command); a tenant's may not (Forbidden)."""

    def __init__(
        self, routes: Routes, limits_for: Callable[[str], Limits], into: str | None, *, any_source: bool
    ) -> None:
        self.routes = routes
        self.org = into
        self.limits = limits_for(into) if into is not None else None
        self._limits_for = limits_for
        self.answer = Answer()
        self._any_source = any_source
        self._reader = StreamReader()
        # The vectors waiting to be sent, all of one namespace and one dimension: an export writes a
        # namespace's vectors together, so a change of either sends them, and so at most one batch
        # waits, however many dimensions a stream holds.
        self._namespace: str | None = None
        self._pending: list[_Vector] = []

    async def push(self, raw: bytes) -> None:
        for item in self._reader.push(raw):
            if isinstance(item, ImportedSession):
                await self._session(item)
            elif isinstance(item, ImportedVector):
                await self._vector(item)
            elif item["kind"] == "header":
                self._header(item)
            else:  # the end line: nothing follows
                await self._send()

    def finish(self) -> dict[str, Any]:
        """The answer; BadLine if the stream was cut short."""
        self._reader.finish()
        return self.answer.as_dict()

    def _header(self, header: dict[str, Any]) -> None:
        if self.org is None:
            self.org = str(header["org"])
            self.limits = self._limits_for(self.org)
        elif header["org"] != self.org and not self._any_source:
            raise Forbidden(
                f"line {self._reader.number}: the export is of organization {header['org']!r}, not yours",
                {"line": self._reader.number},
                "A tenant imports into its own organization only.",
            )

    @property
    def _limits(self) -> Limits:
        if self.limits is None:  # StreamReader yields no session or vector before the header
            raise AssertionError("a line before the header")
        return self.limits

    @property
    def _org(self) -> str:
        if self.org is None:
            raise AssertionError("a line before the header")
        return self.org

    def _refused(self, line: int, refused: EngineError, **about: str) -> None:
        """A line refused; a shard that cannot answer is raised instead, stopping the import."""
        if isinstance(refused, Unavailable | Internal | ServerFault):
            raise refused
        self.answer.refused({"line": line, **about, "error": str(refused)})

    # -- sessions -------------------------------------------------------------------------------------

    async def _session(self, item: ImportedSession) -> None:
        try:
            if not is_session_id(item.id):
                raise ValidationFailed(
                    f"line {item.line}: {item.id[:64]!r} is not a session id", {"line": item.line}
                )
            check_session(item, self._limits.sessions)
            session = item.to_session(self._org)
            max_active = shard_share(self._limits.sessions.max_active_sessions, self.routes.sessions.shards)
            op = ImportSession(self._org, session.id, encode_session(session), max_active)
            result = await self.routes.submit_session(self._org, session.id, op)
        except EngineError as refused:
            self._refused(item.line, refused, session_id=item.id)
            return
        if result is None:
            self.answer.skipped += 1
        else:
            self.answer.imported["sessions"] += 1
            self.answer.imported["messages"] += len(item.messages)

    # -- vectors --------------------------------------------------------------------------------------

    async def _vector(self, item: ImportedVector) -> None:
        r = item.record
        try:
            namespace = check_namespace(r["namespace"])
            depth = self._limits.sessions.max_json_depth
            metadata = check_vector(
                r["id"], r["text"], r["values"], r["metadata"], "vector", self._limits.memory, depth
            )
            row = normalized(np.asarray([r["values"]], dtype=np.float64))[0]
        except EngineError as refused:
            self._refused(item.line, refused)
            return
        if namespace != self._namespace or (self._pending and len(self._pending[0].row) != len(row)):
            await self._send()
            self._namespace = namespace
        self._pending.append(_Vector(item.line, r["id"], row, metadata, r["text"]))
        if len(self._pending) >= VECTOR_BATCH:
            await self._send()

    async def _send(self) -> None:
        """The vectors waiting, as one ImportVectors; refused whole (a dimension the namespace does
        not hold, its quota), each of its vectors is in the errors with its line."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        op = ImportVectors(
            self._org,
            str(self._namespace),
            tuple(v.id for v in batch),
            np.stack([v.row for v in batch]),
            tuple(v.metadata for v in batch),
            tuple(v.text for v in batch),
            self._limits.sessions.max_vectors_per_namespace,
        )
        try:
            result = await self.routes.submit_memory(self._org, op)
        except EngineError as refused:
            for vector in batch:
                self._refused(vector.line, refused)
            return
        imported = result["imported"] if result is not None else 0
        self.answer.imported["vectors"] += imported
        self.answer.skipped += len(batch) - imported


def check_session(item: ImportedSession, limits: LimitsConfig) -> None:
    """The importer's limits, as a create and its appends would be held to them; each refusal
    names the session's line."""
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


async def stream_lines(chunks: AsyncIterable[bytes], limits: Limits) -> AsyncIterator[bytes]:
    """A body's lines as its chunks arrive; PayloadTooLarge past `max_import_bytes` bytes or for a
    line longer than any export writes."""
    limit = limits.sessions.max_import_bytes
    splitter = LineSplitter(max_import_line_bytes(limits))
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge("the import is too large", {"limit_bytes": limit})
        for line in splitter.push(chunk):
            yield line
    last = splitter.finish()
    if last is not None:
        yield last


# A number in a vector line, as JSON writes a float: sign, 17 digits, point, exponent, comma.
_NUMBER_BYTES = 26


def max_import_line_bytes(limits: Limits) -> int:
    """The longest line an import takes. A line holds one message, one session with its context,
    or one vector; each came in through a request body (max_body_bytes) or within its own limits,
    and the margin holds the fields around them."""
    s, m = limits.sessions, limits.memory
    vector = m.max_dimension * _NUMBER_BYTES + 4 * m.max_text_chars + m.max_metadata_bytes
    return max(s.max_body_bytes, s.max_message_bytes + s.max_context_bytes, vector) + _LINE_MARGIN

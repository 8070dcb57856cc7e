"""The export format: an organization as NDJSON, one JSON object a line, and the reader that checks
a stream of it line by line. Pure: no I/O, no FastAPI; docs/export.schema.json documents each line.

A stream is a header, then each session as a `session` line followed by its `message` lines in seq
order, then `vector` lines, then an `end` line with the counts, so a stream cut short is refused. A
session's messages are lines of their own, not an array inside its line: a writer sends a long
session a page at a time and never holds it as one document.

An export cursor (ExportCursor) walks one organization's sessions on a shard as they were when it
opened: SessionStore copies a session it has not reached before changing it (as a snapshot does).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.errors import PayloadTooLarge, ValidationFailed

from .session import Message, Session, SessionStatus, SummaryStatus

FORMAT = "session-engine-export"
VERSION = 1
KINDS = ("header", "session", "message", "vector", "end")
# An export page holds about this much (content, contexts, a line's other fields counted as
# LINE_OVERHEAD): a page of long messages stays as bounded in bytes as one of short ones in lines.
PAGE_BYTES = 4 * 1024 * 1024
LINE_OVERHEAD = 200

_STATUSES = {s.value for s in SessionStatus}
_SUMMARY_STATES = {s.value for s in SummaryStatus}
_ROLES = {"user", "assistant", "system", "tool"}
_INT = (int,)
_OPT_INT = (int, type(None))
_OPT_STR = (str, type(None))

# Each kind's fields: name -> the JSON types it may hold (bool is refused where an int is wanted).
_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "header": {
        "kind": (str,),
        "format": (str,),
        "version": _INT,
        "org": (str,),
        "exported_at": _INT,
        "watermarks": (dict,),
    },
    "session": {
        "kind": (str,),
        "id": (str,),
        "name": (str,),
        "status": (str,),
        "ttl_seconds": _INT,
        "created_at": _INT,
        "updated_at": _INT,
        "expires_at": _INT,
        "ended_at": _OPT_INT,
        "message_count": _INT,
        "context": (dict,),
        "version": _INT,
        "summary_status": _OPT_STR,
        "summary": _OPT_STR,
        "summary_error": _OPT_STR,
        "summary_attempts": _INT,
        "summary_provenance": (dict, type(None)),
        "index_status": _OPT_STR,
        "indexed_at": _OPT_INT,
        "forked_from": (dict, type(None)),
    },
    "message": {
        "kind": (str,),
        "session_id": (str,),
        "seq": _INT,
        "role": (str,),
        "content": (str,),
        "created_at": _INT,
        "tool_call_id": (str,),
        "tool_name": (str,),
    },
    "vector": {
        "kind": (str,),
        "namespace": (str,),
        "id": (str,),
        "values": (list,),
        "text": _OPT_STR,
        "metadata": (dict,),
    },
    "end": {"kind": (str,), "sessions": _INT, "messages": _INT, "vectors": _INT},
}
_OPTIONAL = {"message": {"tool_call_id", "tool_name"}, "session": {"forked_from"}}
_PROVENANCE = {
    "model": (str,),
    "method": (str,),
    "reason": (str,),
    "messages_covered": _INT,
    "messages_total": _INT,
    "created_at": _OPT_INT,
    # The model's pass over an extract (engine.closing.model_pass): why it was set aside, and an
    # upgrade still queued, which an import does not resume (ImportedSession.to_session).
    "model_rejected": (str,),
    "upgrade": (str,),
}
_UPGRADE_STATES = {"pending"}  # as docs/export.schema.json lists them

_FORKED_FROM: dict[str, tuple[type, ...]] = {"session_id": (str,), "seq": _INT}
_METHODS = {"model", "extractive"}  # as docs/export.schema.json lists them
_INDEX_STATES = {"pending", "ready", "failed", None}


class BadLine(ValidationFailed):
    """A line of an import that is not in the format, or out of its place; names its line."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(
            f"line {line}: {reason}",
            {"line": line},
            "Send the lines as GET /export wrote them (docs/export.schema.json).",
        )


# -- writing --------------------------------------------------------------------------------------


def header_line(org: str, exported_at: int, watermarks: dict[str, int]) -> dict[str, Any]:
    return {
        "kind": "header",
        "format": FORMAT,
        "version": VERSION,
        "org": org,
        "exported_at": exported_at,
        "watermarks": watermarks,
    }


def session_line(session: Session) -> dict[str, Any]:
    """The session's view as the API shows it, without its messages (they follow as lines)."""
    return {"kind": "session", **session.view()}


def message_lines(
    session: Session, first_seq: int, limit: int, max_bytes: int | None = None
) -> list[dict[str, Any]]:
    """Lines of messages first_seq.. of a session: at most `limit`, and (at least one) about
    `max_bytes` of content."""
    end = min(len(session.messages), first_seq - 1 + limit)
    if max_bytes is not None:
        size, stop = 0, first_seq - 1
        while stop < end and (stop == first_seq - 1 or size < max_bytes):
            size += len(session.messages[stop].content) + LINE_OVERHEAD
            stop += 1
        end = stop
    return [
        {"kind": "message", "session_id": session.id, **session.messages[i].view(i + 1)}
        for i in range(first_seq - 1, end)
    ]


def end_line(sessions: int, messages: int, vectors: int) -> dict[str, Any]:
    return {"kind": "end", "sessions": sessions, "messages": messages, "vectors": vectors}


def encode_lines(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


# -- reading --------------------------------------------------------------------------------------


class LineSplitter:
    """A body's lines as its chunks arrive, each at most `max_line_bytes`: PayloadTooLarge, with
    the line's number, past it. The unfinished line grows in place and only a new chunk is searched
    for its newline, so one long line costs its length once, not once per chunk."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.number = 0  # lines yielded so far
        self._tail = bytearray()

    def push(self, chunk: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        end = chunk.find(b"\n")
        while end != -1:
            self._grow(chunk, start, end)
            lines.append(bytes(self._tail))
            self._tail.clear()
            self.number += 1
            start = end + 1
            end = chunk.find(b"\n", start)
        self._grow(chunk, start, len(chunk))
        return lines

    def finish(self) -> bytes | None:
        """The last line when the body does not end in a newline."""
        if not self._tail.strip():
            return None
        self.number += 1
        return bytes(self._tail)

    def _grow(self, chunk: bytes, start: int, end: int) -> None:
        if len(self._tail) + end - start > self.max_line_bytes:
            line = self.number + 1
            raise PayloadTooLarge(
                f"line {line} is longer than {self.max_line_bytes} bytes",
                {"line": line, "limit_bytes": self.max_line_bytes},
            )
        self._tail += chunk[start:end]


@dataclass(slots=True)
class ImportedSession:
    """A session line and its messages, read whole: the unit an import applies all or nothing."""

    line: int  # the session line's number
    record: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.record["id"])

    def to_session(self, org: str) -> Session:
        """The session to store in `org`, exactly as exported, queued to go back into this
        deployment's session memory as its source had it: a summary pending or running is queued
        again as a close queues one (pending, no attempts yet); otherwise a session whose turns were
        indexed (or were being re-indexed) or whose summary is ready is queued for a re-index only
        (Session.reindex), which puts back its turns and that summary without making a new one and
        leaves every summary field as it is; any other session (never indexed) is queued for nothing.
        A summary is imported as its source had it, the model's rejection included; a model upgrade
        the source still had queued is not resumed here (the extract stays: the model pass runs on
        closes, not on copies)."""
        self.check_consistent()
        r = self.record
        provenance = r["summary_provenance"] or {}
        forked = r.get("forked_from")
        session = Session(
            org=org,
            id=r["id"],
            name=r["name"],
            ttl_s=r["ttl_seconds"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            expires_at=r["expires_at"],
            context=r["context"],
            status=SessionStatus(r["status"]),
            version=r["version"],
            ended_at=r["ended_at"],
            summary_status=SummaryStatus(r["summary_status"]) if r["summary_status"] else None,
            summary=r["summary"],
            summary_error=r["summary_error"],
            summary_model=provenance.get("model"),
            summary_covered=provenance.get("messages_covered", 0),
            summary_total=provenance.get("messages_total", 0),
            summarized_at=provenance.get("created_at"),
            summary_attempts=r["summary_attempts"],
            summary_method=provenance.get("method"),
            summary_reason=provenance.get("reason"),
            summary_rejected=provenance.get("model_rejected"),
            messages=[
                Message(m["role"], m["content"], m["created_at"], m.get("tool_call_id"), m.get("tool_name"))
                for m in self.messages
            ],
            forked_from=(forked["session_id"], forked["seq"]) if forked else None,
        )
        if session.summary_unfinished:
            session.summary_status = SummaryStatus.PENDING
            session.summary_attempts = 0
        elif session.status is not SessionStatus.ACTIVE and (
            r["index_status"] in ("ready", "pending") or session.summary_status is SummaryStatus.READY
        ):
            session.reindex = True
        return session

    def check_consistent(self) -> None:
        """ValidationFailed, naming the session's line, for fields no session of this engine holds
        together: a ttl under a second, an ended session without ended_at (or an active one with
        it), an active session whose deadline is not its ttl after a moment of its life."""
        r, line = self.record, self.line
        if r["ttl_seconds"] < 1:
            raise _refused(line, "ttl_seconds", "ttl_seconds must be at least 1")
        active = r["status"] == SessionStatus.ACTIVE.value
        if active != (r["ended_at"] is None):
            what = "an active session has no ended_at" if active else "an ended session has its ended_at"
            raise _refused(line, "ended_at", what)
        # The deadline is set to ttl past the create or the last TTL change, each in its life.
        set_at = r["expires_at"] - r["ttl_seconds"] * 1000
        if active and not r["created_at"] <= set_at <= r["updated_at"]:
            raise _refused(line, "expires_at", "expires_at is not ttl_seconds after a moment of the session")


def _refused(line: int, name: str, what: str) -> ValidationFailed:
    return ValidationFailed(f"line {line}: {what}", {"line": line, "field": name})


@dataclass(slots=True)
class ImportedVector:
    line: int
    record: dict[str, Any]


Item = dict[str, Any] | ImportedSession | ImportedVector


def read_stream(lines: Iterable[bytes]) -> Iterator[Item]:
    """Checks a stream line by line and yields, in order: the header (a dict), each session with
    its messages (ImportedSession), each vector (ImportedVector), and the end line (a dict). Raises
    BadLine at the first line that is malformed or out of place, and for a stream without its end
    line or whose end line's counts disagree with what came before."""
    reader = StreamReader()
    for raw in lines:
        yield from reader.push(raw)
    reader.finish()


class StreamReader:
    """read_stream a line at a time, for a reader that gets its lines as they arrive (a request
    body): `push` each line, then `finish`."""

    def __init__(self) -> None:
        self.number = 0  # the last line's
        self.header: dict[str, Any] | None = None
        self.ended = False
        self._session: ImportedSession | None = None
        self._counts = {"sessions": 0, "messages": 0, "vectors": 0}
        self._in_vectors = False

    def push(self, raw: bytes) -> list[Item]:
        self.number += 1
        number = self.number
        if self.ended:
            if raw.strip():
                raise BadLine(number, "a line after the end line")
            return []
        if not raw.strip():
            raise BadLine(number, "an empty line")
        record = parse_line(number, raw)
        kind = record["kind"]
        if self.header is None:
            if kind != "header":
                raise BadLine(number, f"the stream starts with a {kind} line, not its header")
            self.header = record
            return [record]
        if kind == "header":
            raise BadLine(number, "a second header")
        out: list[Item] = []
        session = self._session
        if kind != "message" and session is not None:
            _require_complete(session, number)
            out.append(session)
            self._session = None
        if kind == "session":
            if self._in_vectors:
                raise BadLine(number, "a session line after the vectors")
            self._session = ImportedSession(number, record)
            self._counts["sessions"] += 1
        elif kind == "message":
            if session is None:
                raise BadLine(number, "a message line that follows no session line")
            expected = len(session.messages) + 1
            if record["session_id"] != session.id or record["seq"] != expected:
                raise BadLine(number, f"expected message {expected} of session {session.id}")
            session.messages.append(record)
            self._counts["messages"] += 1
        elif kind == "vector":
            self._in_vectors = True
            self._counts["vectors"] += 1
            out.append(ImportedVector(number, record))
        else:  # end
            if {k: record[k] for k in self._counts} != self._counts:
                raise BadLine(number, f"the end line's counts disagree with the stream's: {self._counts}")
            self.ended = True
            out.append(record)
        return out

    def finish(self) -> None:
        if self.header is None:
            raise BadLine(self.number + 1, "an empty stream: no header")
        if not self.ended:
            raise BadLine(self.number + 1, "the stream ends without its end line (cut short?)")


def _require_complete(session: ImportedSession, number: int) -> None:
    count = session.record["message_count"]
    if len(session.messages) != count:
        raise BadLine(number, f"session {session.id} has {len(session.messages)} of its {count} messages")


def parse_line(number: int, raw: bytes) -> dict[str, Any]:
    """One line, checked against its kind's fields (docs/export.schema.json)."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadLine(number, "not JSON") from None
    if not isinstance(record, dict):
        raise BadLine(number, "not a JSON object")
    kind = record.get("kind")
    if kind not in _FIELDS:
        raise BadLine(number, f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    _check_fields(number, record, _FIELDS[kind], _OPTIONAL.get(kind, set()))
    _check_values(number, kind, record)
    return record


def _check_fields(
    number: int, record: dict[str, Any], fields: dict[str, tuple[type, ...]], optional: set[str]
) -> None:
    for name in record:
        if name not in fields:
            raise BadLine(number, f"unknown field {name!r}")
    for name, types in fields.items():
        if name not in record:
            if name in optional:
                continue
            raise BadLine(number, f"missing field {name!r}")
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise BadLine(number, f"field {name!r} has the wrong type")


def _check_values(number: int, kind: str, record: dict[str, Any]) -> None:
    if kind == "header" and (record["format"] != FORMAT or record["version"] != VERSION):
        raise BadLine(number, f"not a {FORMAT} stream of version {VERSION}")
    if kind == "session":
        if record["status"] not in _STATUSES:
            raise BadLine(number, f"unknown status {record['status']!r}")
        if record["summary_status"] is not None and record["summary_status"] not in _SUMMARY_STATES:
            raise BadLine(number, f"unknown summary_status {record['summary_status']!r}")
        if record["summary_provenance"] is not None:
            provenance = record["summary_provenance"]
            _check_fields(number, provenance, _PROVENANCE, {"reason", "model_rejected", "upgrade"})
            if provenance["method"] not in _METHODS:
                raise BadLine(number, f"unknown summary method {provenance['method']!r}")
            if provenance.get("upgrade", "pending") not in _UPGRADE_STATES:
                raise BadLine(number, f"unknown summary upgrade {provenance['upgrade']!r}")
        if record["index_status"] not in _INDEX_STATES:
            raise BadLine(number, f"unknown index_status {record['index_status']!r}")
        if record.get("forked_from") is not None:
            _check_fields(number, record["forked_from"], _FORKED_FROM, set())
    if kind == "message" and record["role"] not in _ROLES:
        raise BadLine(number, f"unknown role {record['role']!r}")
    if kind == "vector" and not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in record["values"]
    ):
        raise BadLine(number, "field 'values' must be a list of numbers")


# -- the cursor a shard keeps for an export in progress ----------------------------------------------


class ExportCursor:
    """One organization's sessions on a shard, each as it was when the cursor opened, paged out as
    lines. `saved` holds the copy of a session changed (or deleted) before the cursor reached it;
    SessionStore makes it (see SessionStore._before_change)."""

    def __init__(
        self, org: str, keys: list[tuple[str, str]], watermark: int, opened_ms: int, idle_ms: int
    ) -> None:
        self.org = org
        self.watermark = watermark
        self.used_ms = opened_ms  # the last time a page was taken: an abandoned cursor lapses
        self.idle_ms = idle_ms  # unused this long, it has lapsed
        self.unreached: set[tuple[str, str]] = set(keys)
        self.saved: dict[tuple[str, str], Session] = {}
        self._keys = keys
        self._position = 0
        self._current: Session | None = None  # the session whose messages are being paged out
        self._next_seq = 1

    def keep_before_change(self, session: Session) -> None:
        key = (session.org, session.id)
        if key in self.unreached and key not in self.saved:
            self.saved[key] = session.copy()

    def next_page(
        self, live: dict[tuple[str, str], Session], max_lines: int, max_bytes: int = PAGE_BYTES
    ) -> tuple[list[Any], bool]:
        """Up to `max_lines` lines of about `max_bytes` at most (a line more than that is a page
        alone), and whether the cursor is done. A long session's messages span pages; the session
        is held (a copy of its message list) until they are all out."""
        lines: list[Any] = []
        size = 0
        while len(lines) < max_lines and size < max_bytes:
            if self._current is None:
                if self._position >= len(self._keys):
                    return lines, True
                key = self._keys[self._position]
                self._position += 1
                self.unreached.discard(key)
                session = self.saved.pop(key, None)
                if session is None:
                    found = live.get(key)
                    if found is None:
                        continue
                    session = found.copy()  # later appends must not reach the export
                line = session_line(session)
                lines.append(line)
                size += len(orjson.dumps(line["context"])) + len(session.name) + LINE_OVERHEAD
                self._current, self._next_seq = session, 1
                continue
            page = message_lines(self._current, self._next_seq, max_lines - len(lines), max_bytes - size)
            size += sum(len(m["content"]) + LINE_OVERHEAD for m in page)
            lines.extend(page)
            self._next_seq += len(page)
            if self._next_seq > len(self._current.messages):
                self._current = None
        return lines, False

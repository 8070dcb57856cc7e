"""The export format (engine.sessions.export): what a shard's cursor writes reads back as the same
sessions, and a stream cut short, reordered or malformed is refused at its line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import PayloadTooLarge, QuotaExceeded, Unavailable, ValidationFailed
from engine.sessions.codec import encode_session
from engine.sessions.export import (
    PAGE_BYTES,
    BadLine,
    ImportedSession,
    ImportedVector,
    LineSplitter,
    encode_lines,
    end_line,
    header_line,
    read_stream,
)
from engine.sessions.ops import (
    AppendMessages,
    CloseExport,
    CreateSession,
    DeleteSession,
    EndSession,
    ExportPage,
    FinishSummary,
    GetSession,
    ImportSession,
    OpenExport,
    OpenExports,
    ReplaceContext,
    StartSummary,
    UpgradeSummary,
)
from engine.sessions.session import NewMessage, SessionStatus, new_session_id
from engine.sessions.store import SessionStore

T0 = 1_700_000_000_000
SCHEMA = json.loads((Path(__file__).parents[3] / "docs" / "export.schema.json").read_text())

texts = st.text(max_size=20)
messages = st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "tool"]), texts), max_size=6)
sessions = st.lists(
    st.tuples(
        texts, messages, st.dictionaries(st.text(max_size=5), st.integers(-(2**53), 2**53)), st.booleans()
    ),
    max_size=5,
)


def filled_store(spec: list[tuple[str, list[tuple[str, str]], dict[str, int], bool]]) -> SessionStore:
    store = SessionStore()
    for i, (name, said, context, close) in enumerate(spec):
        sid = new_session_id()
        store.apply(CreateSession("acme", sid, name, 60, context), T0 + i)
        if said:
            store.apply(AppendMessages("acme", sid, tuple(NewMessage(r, c) for r, c in said)), T0 + i + 1)
        if close:
            store.apply(EndSession("acme", sid, SessionStatus.CLOSED), T0 + i + 2)
    return store


def export(
    store: SessionStore, org: str = "acme", page: int = 3, export_id: str = "x"
) -> list[dict[str, Any]]:
    opened = store.apply(OpenExport(org, export_id, max_open=4, idle_ms=60_000, max_per_org=2), T0)
    lines: list[dict[str, Any]] = [header_line(org, T0, {"session-0": opened["watermark"]})]
    done = False
    while not done:
        answer = store.apply(ExportPage(org, export_id, page), T0)
        lines += answer["lines"]
        done = answer["done"]
    count = sum(1 for line in lines if line["kind"] == "session")
    return [*lines, end_line(count, sum(1 for line in lines if line["kind"] == "message"), 0)]


def stream(lines: list[dict[str, Any]]) -> list[bytes]:
    return encode_lines(lines).splitlines(keepends=True)


def import_all(store: SessionStore, org: str, raw: list[bytes]) -> int:
    imported = 0
    for item in read_stream(raw):
        if isinstance(item, ImportedSession):
            session = item.to_session(org)
            if store.apply(ImportSession(org, session.id, encode_session(session)), T0) is not None:
                imported += 1
    return imported


def views(store: SessionStore, org: str) -> list[dict[str, Any]]:
    lines = export(store, org, page=1000, export_id="compare")
    return [line for line in lines if line["kind"] in ("session", "message")]


@settings(max_examples=40, deadline=None)
@given(sessions, st.integers(1, 5))
def test_an_export_imports_back_as_the_same_sessions(spec: Any, page: int) -> None:
    source = filled_store(spec)
    lines = export(source, page=page)
    for line in lines:
        jsonschema.validate(line, SCHEMA)
    target = SessionStore()
    assert import_all(target, "acme", stream(lines)) == len(spec)
    before, after = views(source, "acme"), views(target, "acme")
    for b, a in zip(before, after, strict=True):
        if b["kind"] == "session" and b["status"] == "closed":
            # queued for indexing here, as a close queues it
            b, a = dict(b, summary_attempts=0), dict(a, summary_attempts=0)
        assert a == b
    assert import_all(target, "acme", stream(lines)) == 0  # the second time: all skipped


@settings(max_examples=40, deadline=None)
@given(sessions.filter(lambda s: sum(len(m) for _, m, _, _ in s) > 0), st.data())
def test_a_stream_cut_short_is_refused(spec: Any, data: st.DataObject) -> None:
    raw = stream(export(filled_store(spec)))
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(BadLine):
        list(read_stream(raw[:cut]))


@settings(max_examples=40, deadline=None)
@given(sessions.filter(lambda s: sum(len(m) for _, m, _, _ in s) > 1), st.data())
def test_reordered_lines_are_refused_at_their_line(spec: Any, data: st.DataObject) -> None:
    raw = stream(export(filled_store(spec)))
    i = data.draw(st.integers(0, len(raw) - 2))
    j = data.draw(st.integers(i + 1, len(raw) - 1))
    swapped = list(raw)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    moved = [orjson.loads(raw[k]) for k in (i, j)]
    if swapped == raw or all(m["kind"] == "session" and m["message_count"] == 0 for m in moved):
        return  # the same lines, or two sessions without messages: still a stream in order
    with pytest.raises(BadLine) as refused:
        list(read_stream(swapped))
    assert refused.value.details["line"] <= j + 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "not JSON"),
        (b'{"kind": "blob"}', "unknown kind"),
        (b'{"kind": "end", "sessions": 0, "messages": 0, "vectors": 0, "extra": 1}', "unknown field"),
        (b'{"kind": "end", "sessions": "0", "messages": 0, "vectors": 0}', "wrong type"),
    ],
)
def test_a_bad_line_names_its_number_and_why(line: bytes, reason: str) -> None:
    header = orjson.dumps(header_line("acme", T0, {})) + b"\n"
    with pytest.raises(BadLine) as refused:
        list(read_stream([header, line]))
    assert refused.value.details == {"line": 2}
    assert reason in str(refused.value)


def test_vectors_follow_the_sessions() -> None:
    vector = {"kind": "vector", "namespace": "n", "id": "v", "values": [0.5], "text": None, "metadata": {}}
    jsonschema.validate(vector, SCHEMA)
    raw = stream([header_line("acme", T0, {}), vector, end_line(0, 0, 1)])
    read = list(read_stream(raw))
    assert isinstance(read[1], ImportedVector)
    assert read[1].line == 2


def test_an_export_is_the_state_when_it_opened() -> None:
    store = filled_store([("a", [("user", "one")], {}, False), ("b", [("user", "two")], {}, False)])
    first, second = (line["id"] for line in export(store) if line["kind"] == "session")
    store.apply(OpenExport("acme", "cut", max_open=4, idle_ms=60_000, max_per_org=2), T0)
    store.apply(AppendMessages("acme", second, (NewMessage("user", "later"),)), T0 + 10)
    store.apply(ReplaceContext("acme", second, {"later": True}), T0 + 10)
    store.apply(DeleteSession("acme", first), T0 + 10)
    made_later = new_session_id()
    store.apply(CreateSession("acme", made_later, "c", 60, {}), T0 + 10)
    lines = store.apply(ExportPage("acme", "cut", 100), T0 + 10)["lines"]
    assert [line["id"] for line in lines if line["kind"] == "session"] == [first, second]
    assert [line["content"] for line in lines if line["kind"] == "message"] == ["one", "two"]
    assert lines[2]["context"] == {}
    assert store.apply(GetSession("acme", second), T0)["message_count"] == 2


def test_open_exports_are_bounded_and_an_abandoned_one_lapses() -> None:
    store = filled_store([("a", [], {}, False)])
    store.apply(OpenExport("acme", "one", max_open=1, idle_ms=1000, max_per_org=1), T0)
    with pytest.raises(Unavailable):
        store.apply(OpenExport("acme", "two", max_open=1, idle_ms=1000, max_per_org=1), T0 + 500)
    store.apply(OpenExport("acme", "two", max_open=1, idle_ms=1000, max_per_org=1), T0 + 2000)
    with pytest.raises(Unavailable):
        store.apply(ExportPage("acme", "one", 10), T0 + 2000)
    store.apply(CloseExport("acme", "two"), T0 + 2000)
    store.apply(OpenExport("acme", "three", max_open=1, idle_ms=1000, max_per_org=1), T0 + 2000)


def test_a_page_call_sweeps_lapsed_cursors() -> None:
    store = filled_store([("a", [], {}, False)])
    store.apply(OpenExport("acme", "abandoned", max_open=2, idle_ms=1000, max_per_org=2), T0)
    store.apply(OpenExport("acme", "live", max_open=2, idle_ms=60_000, max_per_org=2), T0)
    store.apply(ExportPage("acme", "live", 0), T0 + 2000)
    assert store.apply(OpenExports(), T0 + 2000) == {"exports": 1}


def test_a_lapsed_cursor_copies_nothing_and_is_dropped_by_the_next_change() -> None:
    store, sid = SessionStore(), new_session_id()
    store.apply(CreateSession("acme", sid, "a", 60, {}), T0)
    store.apply(OpenExport("acme", "abandoned", max_open=2, idle_ms=1000, max_per_org=2), T0)
    store.apply(AppendMessages("acme", sid, (NewMessage("user", "later"),)), T0 + 2000)
    assert store.apply(OpenExports(), T0 + 2000) == {"exports": 0}


def test_a_cursor_kept_alive_does_not_lapse_while_it_waits() -> None:
    store = filled_store([("a", [("user", "hi")], {}, False)])
    store.apply(OpenExport("acme", "waiting", max_open=2, idle_ms=1000, max_per_org=2), T0)
    for step in range(1, 6):
        assert store.apply(ExportPage("acme", "waiting", 0), T0 + step * 900) == {"lines": [], "done": False}
    lines = store.apply(ExportPage("acme", "waiting", 10), T0 + 6 * 900)["lines"]
    assert [line["kind"] for line in lines] == ["session", "message"]


def test_one_organization_cannot_take_every_export_slot() -> None:
    store = filled_store([("a", [], {}, False)])
    for i in range(2):
        store.apply(OpenExport("acme", f"mine-{i}", max_open=3, idle_ms=60_000, max_per_org=2), T0)
    with pytest.raises(Unavailable) as refused:
        store.apply(OpenExport("acme", "mine-2", max_open=3, idle_ms=60_000, max_per_org=2), T0)
    assert refused.value.details == {"limit": 2}
    store.apply(OpenExport("other", "theirs", max_open=3, idle_ms=60_000, max_per_org=2), T0)


def test_an_export_sees_only_its_organization() -> None:
    store = filled_store([("a", [("user", "mine")], {}, False)])
    store.apply(CreateSession("other", new_session_id(), "theirs", 60, {}), T0)
    assert [line["name"] for line in export(store) if line["kind"] == "session"] == ["a"]


def test_an_imported_closed_session_is_queued_for_indexing() -> None:
    store = filled_store([("a", [("user", "hello")], {}, True)])
    lines = export(store)
    target = SessionStore()
    import_all(target, "acme", stream(lines))
    assert target.take_summary_jobs() == [("acme", lines[1]["id"])]
    assert target.take_journal()[0].__class__ is ImportSession


class _CountedChunk(bytes):
    """A chunk that counts the bytes searched in it."""

    searched = 0

    def find(self, sub: Any, start: Any = 0, *args: Any) -> int:
        found = super().find(sub, start, *args)
        _CountedChunk.searched += (found if found != -1 else len(self)) - start + 1
        return found


def test_splitting_a_long_line_searches_each_byte_once() -> None:
    _CountedChunk.searched = 0
    chunk = 64 * 1024
    body = b"x" * (8 * 1024 * 1024) + b"\nshort\n"
    splitter = LineSplitter(len(body))
    lines: list[bytes] = []
    for i in range(0, len(body), chunk):
        lines += splitter.push(_CountedChunk(body[i : i + chunk]))
    assert splitter.finish() is None
    assert lines == [b"x" * (8 * 1024 * 1024), b"short"]
    # Each chunk is searched once (plus one per newline and one per chunk): the unfinished line is
    # never searched again, so the work grows with the body, not with its chunks times its length.
    assert _CountedChunk.searched <= len(body) + len(body) // chunk + 1 + 2


def test_splitting_keeps_lines_across_chunks_and_an_unterminated_last_line() -> None:
    splitter = LineSplitter(100)
    assert splitter.push(b"ab") == []
    assert splitter.push(b"c\nd\n\ne") == [b"abc", b"d", b""]
    assert splitter.push(b"f") == []
    assert splitter.finish() == b"ef"
    assert splitter.number == 4


def test_a_line_past_the_cap_is_too_large_with_its_number() -> None:
    splitter = LineSplitter(10)
    assert splitter.push(b"0123456789\n") == [b"0123456789"]
    splitter.push(b"01234")
    with pytest.raises(PayloadTooLarge) as refused:
        splitter.push(b"567890")
    assert refused.value.details == {"line": 2, "limit_bytes": 10}


def exported_sessions(store: SessionStore) -> list[ImportedSession]:
    return [item for item in read_stream(stream(export(store))) if isinstance(item, ImportedSession)]


@pytest.mark.parametrize(
    ("status", "change", "field"),
    [
        ("active", {"ttl_seconds": 0}, "ttl_seconds"),
        ("closed", {"ended_at": None}, "ended_at"),
        ("active", {"ended_at": T0}, "ended_at"),
        ("active", {"expires_at": T0 + 61_000}, "expires_at"),
        ("active", {"expires_at": T0 - 1}, "expires_at"),
    ],
)
def test_an_imported_session_with_fields_no_session_holds_together_is_refused(
    status: str, change: dict[str, Any], field: str
) -> None:
    (item,) = exported_sessions(filled_store([("s", [("user", "hi")], {}, status == "closed")]))
    item.record.update(change)
    with pytest.raises(ValidationFailed) as refused:
        item.to_session("acme")
    assert refused.value.details == {"line": item.line, "field": field}


def test_an_import_is_held_to_the_active_quota_but_not_on_replay() -> None:
    source = filled_store([("a", [], {}, False), ("b", [], {}, False), ("c", [], {}, True)])
    first, second, ended = exported_sessions(source)
    target = SessionStore()

    def op(item: ImportedSession) -> ImportSession:
        return ImportSession("acme", item.id, encode_session(item.to_session("acme")), max_active=1)

    assert target.apply(op(first), T0) is not None
    with pytest.raises(QuotaExceeded):
        target.apply(op(second), T0)
    assert target.apply(op(ended), T0) is not None  # an ended session takes no active slot
    target.replaying = True
    assert target.apply(op(second), T0) is not None


@pytest.mark.parametrize(
    "change",
    [
        {"forked_from": {"x": 1}},
        {"index_status": "odd"},
        {"summary_provenance": dict.fromkeys(["method"], "odd")},
    ],
)
def test_a_session_line_with_a_value_the_schema_refuses_is_a_bad_line(change: dict[str, Any]) -> None:
    lines = export(filled_store([("a", [], {}, False)]))
    if "summary_provenance" in change:
        provenance = {"model": "m", "messages_covered": 0, "messages_total": 0, "created_at": None}
        change = {"summary_provenance": {**provenance, **change["summary_provenance"]}}
    lines[1] = {**lines[1], **change}
    with pytest.raises(BadLine) as refused:
        list(read_stream(stream(lines)))
    assert refused.value.details["line"] == 2


def test_a_page_of_long_messages_is_bounded_in_bytes_as_well_as_lines() -> None:
    big = "x" * (PAGE_BYTES // 8)
    store = filled_store([("a", [("user", big)] * 40, {}, False)])
    store.apply(OpenExport("acme", "big", max_open=4, idle_ms=60_000, max_per_org=2), T0)
    pages = []
    while True:
        answer = store.apply(ExportPage("acme", "big", 1000), T0)
        pages.append(answer["lines"])
        if answer["done"]:
            break
    messages = [line for page in pages for line in page if line["kind"] == "message"]
    assert len(messages) == 40  # every message, in order, across pages
    assert [m["seq"] for m in messages] == list(range(1, 41))
    for page in pages:
        assert sum(len(line.get("content", "")) for line in page) <= PAGE_BYTES + len(big)


def summarized_store(upgrade: str | None) -> tuple[SessionStore, str]:
    """A closed session whose extract is ready with its model upgrade queued, then judged
    (`upgrade`: kept, rejected or skipped; None leaves it queued)."""
    store = filled_store([("a", [("user", "Maya adopted a beagle")], {}, True)])
    ((org, sid),) = store.take_summary_jobs()
    store.apply(StartSummary(org, sid), T0)
    text = "Maya adopted a beagle"
    store.apply(FinishSummary(org, sid, text, "extractive", 1, 1, "extractive", "first pass", True), T0)
    if upgrade is not None:
        text = "Maya has a beagle" if upgrade == "kept" else None
        reason = "dialogue" if upgrade == "rejected" else None
        store.apply(UpgradeSummary(org, sid, upgrade, "fake-model", text, reason, 1, 1), T0 + 5)
    return store, sid


@pytest.mark.parametrize("upgrade", [None, "kept", "rejected", "skipped"])
def test_a_summary_imports_back_whatever_its_model_upgrade_came_to(upgrade: str | None) -> None:
    source, sid = summarized_store(upgrade)
    lines = export(source)
    for line in lines:
        jsonschema.validate(line, SCHEMA)
    target = SessionStore()
    assert import_all(target, "acme", stream(lines)) == 1
    before = source.apply(GetSession("acme", sid), T0)["summary_provenance"]
    after = target.apply(GetSession("acme", sid), T0)["summary_provenance"]
    if upgrade is None:
        # Queued at the source; an import keeps the extract and does not resume the upgrade.
        assert before.pop("upgrade") == "pending"
    assert after == before
    assert (upgrade != "rejected") or after["model_rejected"] == "dialogue"
    assert target.pending_upgrades() == []

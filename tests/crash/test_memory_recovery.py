"""Vector memory and closing jobs across a SIGKILL of the whole server: acknowledged upserts are
there afterwards, and the closing jobs the kill cut off (sessions closed just before it, their
index still pending in the log, one of them with its turns already in memory: cut off mid-index,
as read from the dead server's files) are done after restart: every summary ready, every session
searchable, and memory holds exactly each session's entries."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.server import ServerProcess
from engine.errors import SessionNotFound
from engine.memory import durable as memory_durable
from engine.memory.index import IndexParams
from engine.memory.sessions import SESSION_MEMORY, SESSIONS_OF_MEMORY
from engine.sessions.durable import recover
from engine.sessions.ops import GetSession
from engine.storage.layout import shard_directory

from .test_crash_recovery import ENV, KEY

ORG = "crash"  # KEY's organization (ENV)
SHARDS = 2  # the default config's session shards
# The index held back, so the kill cuts it off: with no live memory every turn is embedded at close,
# and one session at a time is indexed, while the summaries (extracts) are ready within moments.
HELD_BACK = {
    "SESSION_ENGINE_MEMORY__LIVE__ENABLED": "false",
    "SESSION_ENGINE_MODELS__SUMMARIZER__CONCURRENT_JOBS": "1",
}
SESSIONS = 12  # closed just before the kill
MESSAGES = 80  # each, all alike in shape, so every session has as many entries in memory


def wait_for(client: httpx.Client, sid: str, statuses: set[str], timeout_s: float = 90) -> dict[str, Any]:
    """The session once its summary reaches one of `statuses` and its index is no longer pending: a
    ready summary is in session memory only once `index_status` is ready (engine.closing.job)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        session = dict(client.get(f"/sessions/{sid}").json())
        if session["summary_status"] in statuses and session["index_status"] != "pending":
            return session
        time.sleep(0.05)
    raise AssertionError(f"{sid} never reached {statuses}: {session}")


def vectors(client: httpx.Client) -> int:
    """Every entry the memory shards hold, of every namespace (replaced ones count once)."""
    return int(client.get("/readyz").json()["vectors"])


def counted(client: httpx.Client) -> int | None:
    """`vectors`, or None when a memory shard did not answer in time (`/readyz` then sums the others
    only, which would look like a job cut off mid-index)."""
    body = client.get("/readyz").json()
    slow = [name for name in body["loading"] if name.startswith("memory")]
    slow += [
        n for n in body["notices"] if str(n.get("shard", "")).startswith("memory") and "unavailable" in n
    ]
    return None if slow else int(body["vectors"])


def talk(client: httpx.Client, topic: str) -> str:
    sid = client.post("/sessions", json={"name": topic}).json()["id"]
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"talk about {topic}, point {i}"}
        for i in range(MESSAGES)
    ]
    assert client.post(f"/sessions/{sid}/messages", json={"messages": messages}).status_code == 201
    return str(sid)


def index_status_on_disk(data: Path, ids: list[str]) -> dict[str, str | None]:
    """Each session's index_status as the dead server's session logs and snapshots hold it: what a
    restart resumes. Read without repair, so nothing on disk changes before the restart."""
    found: dict[str, str | None] = {}
    for index in range(SHARDS):
        store, _, _ = recover(shard_directory(data, index), repair=False)
        for sid in ids:
            with contextlib.suppress(SessionNotFound):  # on the other shard
                found[sid] = store.apply(GetSession(ORG, sid, limit=0), 0)["index_status"]
    return found


def memory_on_disk(data: Path) -> set[str]:
    """The id of every entry of ORG's session memory (turns; whole sessions and summaries) as the
    memory shards' logs and snapshots hold it, read without repair."""
    found: set[str] = set()
    for directory in sorted((data / "memory").glob("memory-*")):
        store, _, _ = memory_durable.recover(directory, IndexParams(), repair=False)
        for (org, namespace), index in store.namespaces():
            if org == ORG and namespace in (SESSION_MEMORY, SESSIONS_OF_MEMORY):
                found |= {e[0] for i in index.ids_below(index.next_id) if (e := index.entry(i)) is not None}
    return found


def entries_of(sessions: list[str]) -> set[str]:
    """What memory holds of these closed sessions: each turn, the whole session, its summary."""
    return {f"{sid}#{seq}" for sid in sessions for seq in range(1, MESSAGES + 1)} | {
        entry for sid in sessions for entry in (sid, f"{sid}#summary")
    }


def session_pids(server: ServerProcess) -> list[int]:
    """Every process of the server's session (as ServerProcess.kill_session finds them), listed
    before the kill so that the kill itself is one signal a process."""
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if (
                entry.name.isdigit()
                and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == server.proc.pid
            ):
                pids.append(int(entry.name))
    return pids


def kill_mid_index(client: httpx.Client, server: ServerProcess, base: int, per_session: int) -> None:
    """SIGKILL the server as soon as memory holds a session's turns and whole-session entry but not
    yet its summary's (`base` entries, then whole sessions of `per_session`): its job is mid-index,
    with the summary's embed and upsert and its MarkIndexed still to come. Past a minute, at once."""
    pids = session_pids(server)
    deadline = time.monotonic() + 60
    every = base + SESSIONS * per_session  # every job done: the window was missed, fail fast
    while time.monotonic() < deadline:
        count = counted(client)
        if count is not None and ((count - base) % per_session or count >= every):
            break
        time.sleep(0.005)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.kill_session()  # whatever started since, and the wait


def memory_ids(client: httpx.Client) -> list[str]:
    query = {"namespace": "session-memory", "query_text": "talk", "top_k": 50}
    return sorted(m["id"] for m in client.post("/vectors/query", json=query).json()["matches"])


def test_acknowledged_vectors_and_cut_off_closing_jobs_survive_sigkill(tmp_data: Path) -> None:
    server = ServerProcess(tmp_data, [], {**ENV, **HELD_BACK}).wait_ready()
    auth = {"Authorization": f"Bearer {KEY}"}
    acknowledged: list[str] = []
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
            for batch in range(20):
                facts = [
                    {"id": f"v{batch}-{i}", "values": [1.0, batch, i], "metadata": {"batch": batch}}
                    for i in range(50)
                ]
                response = client.post("/vectors/upsert", json={"namespace": "facts", "vectors": facts})
                assert response.status_code == 200, response.text
                acknowledged += [v["id"] for v in facts]
            deleted = [f"v0-{i}" for i in range(10)]
            assert (
                client.post("/vectors/delete", json={"namespace": "facts", "ids": deleted}).json()["deleted"]
                == 10
            )
            # One session closed and indexed whole first: what one session holds in memory.
            before = vectors(client)
            first = talk(client, "topic 0")
            client.post(f"/sessions/{first}/close")
            assert wait_for(client, first, {"ready"})["index_status"] == "ready"
            per_session = vectors(client) - before
            assert per_session > MESSAGES, "its turns, its session entry and its summary"
            sessions = [talk(client, f"topic {n}") for n in range(1, SESSIONS + 1)]
            for sid in sessions:
                assert client.post(f"/sessions/{sid}/close").json()["summary_status"] == "pending"
            kill_mid_index(client, server, before + per_session, per_session)
    finally:
        server.kill_session()  # a no-op after kill_mid_index; at once if something failed before it
        server.stop()

    at_kill = index_status_on_disk(tmp_data, [first, *sessions])
    assert at_kill[first] == "ready" and set(at_kill) == {first, *sessions}
    cut_off = [sid for sid in sessions if at_kill[sid] == "pending"]
    assert cut_off, f"the kill landed after every index was done: {at_kill}"
    in_memory = memory_on_disk(tmp_data)
    mid_index = [sid for sid in cut_off if f"{sid}#1" in in_memory]
    assert mid_index, "no job was cut off mid-index: the kill came between two sessions' indexes"

    sessions.append(first)
    restarted = ServerProcess(tmp_data, [], {**ENV, **HELD_BACK}).wait_ready()
    try:
        with httpx.Client(base_url=restarted.url, headers=auth, timeout=30) as client:
            survivors = set(acknowledged) - set(deleted)
            recovered: set[str] = set()
            for batch in range(20):
                probe = {
                    "namespace": "facts",
                    "vector": [1.0, 1.0, 1.0],
                    "top_k": 100,
                    "filter": {"batch": batch},
                }
                recovered |= {m["id"] for m in client.post("/vectors/query", json=probe).json()["matches"]}
            assert recovered == survivors
            for sid in sessions:
                session = wait_for(client, sid, {"ready", "failed"})
                assert (session["summary_status"], session["index_status"]) == ("ready", "ready"), session
            assert memory_ids(client) == sorted(sessions)
    finally:
        restarted.stop()
    # A cut-off index done again replaced what went in before the kill: exactly each session's.
    assert memory_on_disk(tmp_data) == entries_of(sessions), (len(cut_off), len(mid_index))

    again = ServerProcess(tmp_data, [], ENV).wait_ready()  # after a graceful stop, nothing is lost either
    try:
        with httpx.Client(base_url=again.url, headers=auth, timeout=30) as client:
            assert memory_ids(client) == sorted(sessions)
            assert vectors(client) == before + per_session * len(sessions)  # and no other entry
            stats = client.post(
                "/vectors/query", json={"namespace": "facts", "vector": [1, 1, 1], "top_k": 100}
            )
            assert stats.json()["count"] == 100
    finally:
        again.stop()

"""Live memory across a SIGKILL of the whole server while it is behind: after a restart every turn
of every open session is in session memory exactly once (counted on disk once the server stopped),
with one stand-in entry per session."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.server import ServerProcess
from engine.config import DurabilityConfig
from engine.memory.durable import DurableMemory
from engine.memory.index import IndexParams
from engine.memory.sessions import SESSION_MEMORY, SESSIONS_OF_MEMORY
from engine.storage.layout import memory_directory

from .test_crash_recovery import ENV, KEY

SESSIONS, MESSAGES = 12, 30
# Ticks far apart, so the kill lands with most turns not yet indexed.
BEHIND = {"SESSION_ENGINE_MEMORY__LIVE__INTERVAL_S": "5"}


def held(tmp_data: Path) -> tuple[Counter[str], Counter[str]]:
    """Per session: its turn entries in session memory, and its whole-session entries, on disk."""
    turns: Counter[str] = Counter()
    wholes: Counter[str] = Counter()
    for shard in range(2):  # memory.shards' default
        durable = DurableMemory(
            memory_directory(tmp_data, shard), DurabilityConfig(), IndexParams(), lock_wait_s=5
        )
        try:
            for (org, namespace), index in durable.store.namespaces():
                if org != "crash" or namespace not in (SESSION_MEMORY, SESSIONS_OF_MEMORY):
                    continue
                for faiss_id in index.ids_below(index.next_id):
                    entry = index.entry(faiss_id)
                    if entry is not None:
                        into = turns if namespace == SESSION_MEMORY else wholes
                        into[str(entry[1]["session_id"])] += 1
        finally:
            durable.close(snapshot=False)
    return turns, wholes


def said(client: httpx.Client, sid: str, word: str) -> bool:
    """Whether a session-memory query shows `word` in a highlight of the session's match."""
    body = {"namespace": "session-memory", "query_text": word, "filter": {"session_id": sid}}
    matches = client.post("/vectors/query", json=body).json()["matches"]
    return any(word in h["content"] for m in matches for h in m["metadata"]["highlights"])


def test_turns_behind_at_a_sigkill_are_indexed_once_after_restart(tmp_data: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    server = ServerProcess(tmp_data, [], {**ENV, **BEHIND}).wait_ready()
    sessions: list[str] = []
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
            for s in range(SESSIONS):
                sid = client.post("/sessions", json={"name": f"agent {s}"}).json()["id"]
                sessions.append(sid)
            for m in range(MESSAGES):
                for s, sid in enumerate(sessions):
                    body = {"role": "user", "content": f"step {m} of agent {s}: word{s}x{m}"}
                    assert client.post(f"/sessions/{sid}/messages", json=body).status_code == 201
            # Work was pending at the kill (so only the restart's backlog can index it): some
            # session's last turn is not found yet.
            last = [f"word{s}x{MESSAGES - 1}" for s in range(SESSIONS)]
            assert not all(said(client, sid, word) for sid, word in zip(sessions, last, strict=True))
    finally:
        server.kill_session()
        server.stop()

    restarted = ServerProcess(tmp_data, [], ENV).wait_ready()
    try:
        with httpx.Client(base_url=restarted.url, headers=auth, timeout=30) as client:
            deadline = time.monotonic() + 120
            for s, sid in enumerate(sessions):
                word = f"word{s}x{MESSAGES - 1}"
                while not said(client, sid, word):
                    assert time.monotonic() < deadline, f"{sid}'s last turn never indexed"
                    time.sleep(0.2)
    finally:
        restarted.stop()

    turns, wholes = held(tmp_data)
    assert {sid: turns[sid] for sid in sessions} == dict.fromkeys(sessions, MESSAGES)
    assert {sid: wholes[sid] for sid in sessions} == dict.fromkeys(sessions, 1)

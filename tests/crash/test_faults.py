"""Faults injected into a real server, one actor process at a time: a session shard SIGKILLed under
load, a summarizer SIGKILLed while it generates, and a shard whose disk refuses writes (a real file
size limit, RLIMIT_FSIZE, set on the shard's process: we run as root, so permissions stop nothing).

One server serves the whole module (starting one takes most of the time); the disk test, last,
crashes and restarts it. Every process signalled is checked first to be one of that server's (in
its session)."""

from __future__ import annotations

import os
import resource
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.server import ServerProcess
from engine.routing import memory_shard_for, shard_for
from engine.storage.frames import read_frames
from engine.storage.wal import WAL_MAGIC, segments

from .fleet import FleetWriter, check_everything_acknowledged_survived
from .test_crash_recovery import ENV, KEY

ORG = "crash"
CALL_TIMEOUT_S = 5.0
SERVER_ENV = {
    **ENV,
    "SESSION_ENGINE_OUTBOX__CALL_TIMEOUT_S": str(CALL_TIMEOUT_S),
    # The tiny model writing 1500 tokens takes seconds a batch, so a kill lands mid-generate.
    "SESSION_ENGINE_MODELS__SUMMARIZER__MIN_NEW_TOKENS": "1500",
    "SESSION_ENGINE_MODELS__SUMMARIZER__MAX_NEW_TOKENS": "1500",
    # Retries with the default attempts (3) and backoff (2 s, doubling): the pool takes no job
    # while Ray restarts the killed summarizer, so the restart costs a job no attempt.
}


class Running:
    """The module's server, restartable on the same data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server = ServerProcess(data_dir, [], SERVER_ENV).wait_ready()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)

    def crash_and_restart(self, check_files: Callable[[], None]) -> None:
        """SIGKILL every process of the server (no final snapshot: its files stay as the faults left
        them), `check_files`, then start it again on the same data."""
        self.server.kill_session()
        self.server.stop()
        check_files()
        self.server = ServerProcess(self.data_dir, [], SERVER_ENV).wait_ready()

    def processes(self) -> dict[int, str]:
        """pid -> command line (Ray's process title) of every process in the server's session: the
        server started them all (its Ray and every actor), and nothing else is in it."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[3]) == self.server.proc.pid:
                found[int(entry.name)] = title.strip()
        return found

    def holder_of(self, directory: Path, title: str, not_pid: int = 0, timeout_s: float = 60) -> int:
        """The pid of the actor that holds `directory` (its LOCK file names it), once it is one of
        the server's processes titled `title` and not `not_pid`."""
        deadline = time.monotonic() + timeout_s
        while True:
            words = (directory / "LOCK").read_text().split()  # "pid N", rewritten by each holder
            pid = int(words[1]) if len(words) == 2 else 0
            if pid not in (0, not_pid) and self.processes().get(pid, "").startswith(title):
                return pid
            assert time.monotonic() < deadline, f"no {title} holds {directory}"
            time.sleep(0.1)

    def kill(self, pid: int, title: str, sig: signal.Signals = signal.SIGKILL) -> None:
        assert self.processes().get(pid, "").startswith(title), f"{pid} is not this server's {title}"
        os.kill(pid, sig)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, servers_use_tiny_summarizer: None) -> Iterator[Running]:
    started = Running(tmp_path_factory.mktemp("faults") / "data")
    try:
        yield started
    finally:
        started.server.stop()


def sessions_by_shard(client: httpx.Client, count: int) -> dict[int, list[str]]:
    """New sessions until each of the two shards has `count`."""
    found: dict[int, list[str]] = {0: [], 1: []}
    while min(len(ids) for ids in found.values()) < count:
        response = client.post("/sessions", json={"name": "faults"})
        assert response.status_code == 201, response.text
        sid = response.json()["id"]
        found[shard_for(ORG, sid, 2)].append(sid)
    return found


def test_a_shard_actor_killed_mid_load_answers_503_then_recovers_every_acknowledged_write(
    running: Running,
) -> None:
    shard_dir = running.data_dir / "shards" / "shard-0000"
    victim = running.holder_of(shard_dir, "ray::SessionShard")
    writers = [FleetWriter(running.server.url, KEY, f"k{i}", seconds=60) for i in range(3)]
    try:
        for w in writers:
            w.start()
        deadline = time.monotonic() + 15
        while sum(w.acknowledged_writes() for w in writers) < 150 and time.monotonic() < deadline:
            time.sleep(0.1)
        # Frozen first, so calls to it are surely in flight when it dies (a shard restarts so fast
        # that calls made after its death mostly just wait for the new one).
        running.kill(victim, "ray::SessionShard", signal.SIGSTOP)
        time.sleep(0.5)
        running.kill(victim, "ray::SessionShard")
        running.holder_of(shard_dir, "ray::SessionShard", not_pid=victim)  # Ray restarted it
        # Each writer goes on for 20 more answers, and until it was answered 2xx after its last 503.
        marks = [len(w.statuses) + 20 for w in writers]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            len(w.statuses) >= mark and recovered(w.statuses) for w, mark in zip(writers, marks, strict=True)
        ):
            time.sleep(0.2)
    finally:
        for w in writers:
            w.stopped.set()
        for w in writers:
            w.join(30)
    statuses = [s for w in writers for s in w.statuses]
    assert 503 in statuses, "requests that reached the killed shard were told it is unavailable"
    assert {s for s in statuses if s >= 400} == {503}, "no other failure, no 500"
    assert all(body["code"] == "UNAVAILABLE" and body["hint"] for w in writers for body in w.error_bodies)
    assert all(recovered(w.statuses) for w in writers), "every writer was answered again after the kill"
    slowest = max(w.slowest_s for w in writers)
    assert slowest < CALL_TIMEOUT_S + 3, f"a request waited {slowest:.1f} s, past the call timeout"
    with running.client() as client:
        assert check_everything_acknowledged_survived(client, writers) == sum(
            len(w.sessions) for w in writers
        )


def recovered(statuses: list[int]) -> bool:
    failed = [i for i, status in enumerate(statuses) if status == 503]
    return not failed or any(status < 400 for status in statuses[failed[-1] + 1 :])


def test_a_summarizer_killed_while_it_generates_an_upgrade_leaves_the_summary_ready_and_retries_it(
    running: Running,
) -> None:
    """The summary is ready at close with an extract; the model's text is an upgrade after it. A
    summarizer killed while it generates that upgrade changes nothing a client sees: the summary
    stays ready, and the upgrade is retried until the model's text is judged (kept or set aside)."""
    with running.client() as client:
        sid = client.post("/sessions", json={"name": "gardening"}).json()["id"]
        client.post(f"/sessions/{sid}/messages", json={"role": "user", "content": "how deep do tulips go?"})
        assert client.post(f"/sessions/{sid}/close").json()["summary_status"] == "pending"
        deadline = time.monotonic() + 30
        while not (
            busy := [p for p, t in running.processes().items() if t == "ray::SummarizerActor.summarize"]
        ):
            assert time.monotonic() < deadline, "the summarizer never started generating the upgrade"
            time.sleep(0.05)
        running.kill(busy[0], "ray::SummarizerActor")
        deadline = time.monotonic() + 120
        while True:
            session = client.get(f"/sessions/{sid}").json()
            provenance = session["summary_provenance"] or {}
            if (
                session["summary_status"] == "ready"
                and provenance.get("upgrade") != "pending"
                and session["index_status"] == "ready"
            ):
                break
            assert session["summary_status"] != "failed", session["summary_error"]
            assert time.monotonic() < deadline, f"the killed upgrade never ended: {session}"
            time.sleep(0.2)
        assert session["summary"] and provenance["messages_total"] == 1
        # Judged: the model's text kept, or set aside with its reason (not skipped).
        assert provenance["method"] == "model" or provenance.get("model_rejected"), provenance
        memory = client.post(
            "/vectors/query", json={"namespace": "session-memory", "query_text": "tulips", "top_k": 100}
        ).json()
        assert sid in {m["id"] for m in memory["matches"]}
    assert busy[0] not in running.processes(), "the killed summarizer is gone; Ray started another"


def limit_file_size(pid: int, soft: int) -> tuple[int, int]:
    """RLIMIT_FSIZE of another process: writes past `soft` bytes then fail with EFBIG (Python
    ignores SIGXFSZ). Returns the limits it had."""
    before = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, before[1]))
    return before


def accepted_within(send: Callable[[], httpx.Response], ok: int, timeout_s: float = 10) -> None:
    """Send until answered `ok`; until then, only 503 UNAVAILABLE."""
    deadline = time.monotonic() + timeout_s
    while (response := send()).status_code != ok:
        assert response.status_code == 503 and time.monotonic() < deadline, response.text
        time.sleep(0.2)


def current_segment(directory: Path) -> Path:
    return segments(directory)[-1][1]


def test_a_shard_whose_disk_refuses_writes_answers_503_serves_reads_and_resumes(running: Running) -> None:
    acked: dict[str, list[str]] = {}  # session -> acknowledged contents, in seq order
    refused: list[str] = []

    def say(client: httpx.Client, sid: str, text: str) -> httpx.Response:
        response = client.post(f"/sessions/{sid}/messages", json={"role": "user", "content": text})
        if response.status_code == 201:
            acked.setdefault(sid, []).append(text)
        return response

    with running.client() as client:
        by_shard = sessions_by_shard(client, 2)
        for sid in by_shard[0] + by_shard[1]:
            for i in range(3):
                assert say(client, sid, f"{sid}-before-{i}").status_code == 201
        memory_index = memory_shard_for(ORG, 2)
        memory_dir = running.data_dir / "memory" / f"memory-{memory_index:04d}"
        upsert = {"namespace": "facts", "vectors": [{"id": "f1", "values": [1.0, 0.0, 0.5]}]}
        assert client.post("/vectors/upsert", json=upsert).status_code == 200

        shard_dir = running.data_dir / "shards" / "shard-0000"
        shard_pid = running.holder_of(shard_dir, "ray::SessionShard")
        memory_pid = running.holder_of(memory_dir, "ray::MemoryShard")
        limits = {
            pid: limit_file_size(pid, current_segment(directory).stat().st_size // 2)
            for pid, directory in ((shard_pid, shard_dir), (memory_pid, memory_dir))
        }
        try:
            sid = by_shard[0][0]
            response = say(client, sid, "refused-1")
            refused.append("refused-1")
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["code"] == "UNAVAILABLE" and "File too large" in body["error"], body
            assert "Idempotency-Key" in body["hint"] and response.headers["Retry-After"]
            read = client.get(f"/sessions/{sid}")
            assert read.status_code == 200, "reads go on"
            assert [m["content"] for m in read.json()["messages"]] == acked[sid]
            assert client.get("/sessions?limit=100").status_code == 200
            for text in ("refused-2", "refused-3"):  # still refused, a second later too
                time.sleep(0.6)
                assert say(client, sid, text).status_code == 503
                refused.append(text)
            assert client.put(f"/sessions/{by_shard[0][1]}/context", json={"x": 1}).status_code == 503
            assert say(client, by_shard[1][0], "other-shard").status_code == 201, "the other shard writes"
            assert client.get("/readyz").status_code == 200

            upsert_refused = client.post(
                "/vectors/upsert", json={**upsert, "vectors": [{"id": "f2", "values": [0, 1, 0]}]}
            )
            assert upsert_refused.status_code == 503 and upsert_refused.json()["code"] == "UNAVAILABLE"
            query = client.post("/vectors/query", json={"namespace": "facts", "vector": [1, 0, 0.5]})
            assert query.status_code == 200 and [m["id"] for m in query.json()["matches"]] == ["f1"]
        finally:
            for pid, before in limits.items():
                resource.prlimit(pid, resource.RLIMIT_FSIZE, before)

        # Each shard retries its disk once a second, on its own timer.
        accepted_within(lambda: say(client, by_shard[0][0], "after"), 201)
        for sid in by_shard[0]:
            assert say(client, sid, f"{sid}-after").status_code == 201
        f3 = {**upsert, "vectors": [{"id": "f3", "values": [0, 0, 1]}]}
        accepted_within(lambda: client.post("/vectors/upsert", json=f3), 200)
        assert running.holder_of(shard_dir, "ray::SessionShard") == shard_pid, "it never restarted"

    def no_damage() -> None:
        for directory in [*sorted((running.data_dir / "shards").iterdir()), memory_dir]:
            for _, path in segments(directory):
                list(read_frames(path, WAL_MAGIC))  # no torn or damaged record anywhere

    running.crash_and_restart(no_damage)
    with running.client() as client:
        for sid, contents in acked.items():
            session = client.get(f"/sessions/{sid}").json()
            assert [m["content"] for m in session["messages"]] == contents, "acknowledged, in order, no more"
            assert [m["seq"] for m in session["messages"]] == list(range(1, len(contents) + 1))
            assert not set(refused) & {m["content"] for m in session["messages"]}
        query = client.post("/vectors/query", json={"namespace": "facts", "vector": [1, 1, 1], "top_k": 10})
        assert sorted(m["id"] for m in query.json()["matches"]) == ["f1", "f3"]

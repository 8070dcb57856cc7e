"""Online backup and restore with real processes: a backup taken while writers append, the server
killed and its disk wiped, the backup restored and served; a restore to a moment between two
writes from a backup and the log archive; an incremental backup; and what `check` and `restore`
refuse, each in one line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.server import ServerProcess

from .test_memory_recovery import wait_for

KEY = "backup-key"
ENV = {"SESSION_ENGINE_API_KEYS": f"{KEY}=backup", "RAY_ADDRESS": ""}
AUTH = {"Authorization": f"Bearer {KEY}"}
BULK_BYTES = 256 * 1024  # a bulk message: a few hundred of them make a backup that takes a while


def cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`session-engine ARGS` as an operator runs it, with no setting of ours in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_ENGINE_")} | {"RAY_ADDRESS": ""}
    command = [sys.executable, "-m", "session_engine", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)


def one_line_refusal(done: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    # A command that joins Ray may first warn of the machine's Ray token file: not the refusal.
    lines = [line for line in done.stderr.splitlines() if "Ray token file" not in line]
    assert len(lines) == 1 and lines[0].startswith("session-engine"), done.stderr
    assert says in lines[0], done.stderr


def empty_or_absent(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


@dataclass
class Acknowledged:
    """What one session's writer was told: seq -> content, and when each answer came."""

    messages: dict[int, str] = field(default_factory=dict)
    at: dict[int, float] = field(default_factory=dict)  # seq -> time.monotonic() of its 2xx
    in_doubt: set[str] = field(default_factory=set)  # sent, answer never seen
    first_key: tuple[str, dict[str, Any], list[int]] | None = None  # a key, its body and its seqs


class Appender(threading.Thread):
    """Appends to sessions of its own under an Idempotency-Key per request until told to stop
    (or its request bound), recording every acknowledged message and the moment of its answer."""

    def __init__(self, url: str, sessions: list[str], name: str, max_requests: int = 3000) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, headers=AUTH, timeout=30)
        self.sessions = {sid: Acknowledged() for sid in sessions}
        self.writer = name
        self.max_requests = max_requests
        self.stop = threading.Event()
        self.failures: list[str] = []

    def run(self) -> None:
        order = list(self.sessions)
        for step in range(self.max_requests):
            if self.stop.is_set():
                return
            sid = order[step % len(order)]
            acked = self.sessions[sid]
            texts = [f"{self.writer}-{step}-{i}" for i in range(1 + step % 3)]
            body = {"messages": [{"role": "user", "content": t} for t in texts]}
            key = f"{self.writer}-{step}-{uuid.uuid4().hex[:8]}"
            try:
                answer = self.client.post(
                    f"/sessions/{sid}/messages", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.TransportError:
                acked.in_doubt.update(texts)
                continue
            if answer.status_code != 201:
                self.failures.append(f"{answer.status_code} {answer.text}")
                continue
            now = time.monotonic()
            stored = answer.json()["messages"]
            for message in stored:
                acked.messages[message["seq"]] = message["content"]
                acked.at[message["seq"]] = now
            if acked.first_key is None:
                acked.first_key = (key, body, [m["seq"] for m in stored])


def bulk_load(client: httpx.Client, sessions: int, messages: int) -> list[str]:
    """Sessions holding `messages` bulk messages each, four to a request."""
    made = []
    for i in range(sessions):
        sid = client.post("/sessions", json={"name": f"bulk-{i}"}).json()["id"]
        for start in range(0, messages, 4):
            batch = [
                {"role": "assistant", "content": f"{i}-{start + j}-" + "x" * BULK_BYTES} for j in range(4)
            ]
            answer = client.post(f"/sessions/{sid}/messages", json={"messages": batch})
            assert answer.status_code == 201, answer.text
        made.append(sid)
    return made


def indexed_session(client: httpx.Client, topic: str) -> dict[str, Any]:
    """A session about `topic`, closed, summarized and indexed into session-memory."""
    sid = client.post("/sessions", json={"name": topic}).json()["id"]
    said = {"role": "user", "content": f"let us talk about {topic} and nothing else"}
    assert client.post(f"/sessions/{sid}/messages", json=said).status_code == 201
    assert client.post(f"/sessions/{sid}/close").status_code == 200
    view = wait_for(client, sid, {"ready", "failed"})
    deadline = time.monotonic() + 60
    while view["index_status"] != "ready":
        assert time.monotonic() < deadline, f"{sid} never indexed: {view}"
        time.sleep(0.1)
        view = client.get(f"/sessions/{sid}").json()
    return dict(view)


def memory_finds(client: httpx.Client, sid: str, topic: str) -> bool:
    query = {"namespace": "session-memory", "query_text": topic, "top_k": 10}
    answer = client.post("/vectors/query", json=query)
    assert answer.status_code == 200, answer.text
    return sid in [m["id"] for m in answer.json()["matches"]]


def messages_of(client: httpx.Client, sid: str) -> list[dict[str, Any]]:
    answer = client.get(f"/sessions/{sid}")
    assert answer.status_code == 200, f"{sid}: {answer.text}"
    return list(answer.json()["messages"])


def test_a_backup_taken_under_load_restores_every_write_acknowledged_before_it(tmp_path: Path) -> None:
    data, dest, later = tmp_path / "data", tmp_path / "backup", tmp_path / "later"
    # Shards snapshot every two seconds, deleting the segments older snapshots cover, as the load
    # and the backups go on.
    server = ServerProcess(
        data, [], {**ENV, "SESSION_ENGINE_DURABILITY__SNAPSHOT_INTERVAL_S": "2"}
    ).wait_ready()
    appenders: list[Appender] = []
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
            indexed = indexed_session(client, "gardening")
            bulk = bulk_load(client, sessions=3, messages=24)
            writing = [client.post("/sessions", json={"name": f"w{i}"}).json()["id"] for i in range(12)]
        appenders = [Appender(server.url, writing[i::4], f"w{i}") for i in range(4)]
        for a in appenders:
            a.start()
        deadline = time.monotonic() + 15
        while sum(len(s.messages) for a in appenders for s in a.sessions.values()) < 100:
            assert time.monotonic() < deadline, "the writers got going"
            time.sleep(0.1)
        began = time.monotonic()  # every answer before this came before the backup began
        backup = subprocess.Popen(
            [sys.executable, "-m", "session_engine", "backup", str(dest), "--data-dir", str(data), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("SESSION_ENGINE_")}
            | {"RAY_ADDRESS": ""},
        )
        out, err = backup.communicate(timeout=120)
        ended = time.monotonic()
        assert backup.returncode == 0, err
        taken = orjson.loads(out)
        acked_during = sum(
            1 for a in appenders for s in a.sessions.values() for t in s.at.values() if t > began
        )
        assert acked_during > 0, "writes went on while the backup ran"
        time.sleep(0.5)  # and after it
        # Once each session shard has deleted the segment its backed-up log began in (snapshots
        # later), an incremental backup cannot continue that log: it copies a snapshot again.
        backed_up = {
            (s["directory"], f["name"]) for s in taken["shards"] if s["kind"] == "session" for f in s["files"]
        }
        deadline = time.monotonic() + 60
        while any((data / d / name).exists() for d, name in backed_up if name.startswith("wal-")):
            assert time.monotonic() < deadline, "the shards snapshot and drop old segments"
            time.sleep(0.2)
        more = cli(
            "backup", str(later), "--incremental", "--from", str(dest), "--data-dir", str(data), "--json"
        )
        assert more.returncode == 0, more.stderr
    finally:
        for a in appenders:
            a.stop.set()
        for a in appenders:
            a.join(30)
        server.kill_session()
        server.stop()
    assert not [f for a in appenders for f in a.failures], "every write was answered 201"
    assert taken["bytes"] > 3 * 24 * BULK_BYTES and ended - began > 0.2, taken

    assert cli("check", str(dest)).returncode == 0
    assert cli("check", str(later)).returncode == 0
    for shard in orjson.loads(more.stdout)["shards"]:
        if shard["kind"] == "session":
            base = next(s for s in taken["shards"] if (s["kind"], s["index"]) == ("session", shard["index"]))
            assert shard["snapshot_lsn"] is not None and shard["snapshot_lsn"] > base["lsn"], shard
    shutil.rmtree(data)  # the disk is lost
    restored = cli("restore", str(dest), "--data-dir", str(data), "--json")
    assert restored.returncode == 0, restored.stderr
    assert orjson.loads(restored.stdout)["source_cluster_id"] == taken["cluster_id"]

    again = ServerProcess(data, [], ENV).wait_ready()
    try:
        with httpx.Client(base_url=again.url, headers=AUTH, timeout=60) as client:
            for i, sid in enumerate(bulk):
                loaded = messages_of(client, sid)
                assert [m["content"].split("-x")[0] for m in loaded] == [f"{i}-{j}" for j in range(24)]
            kept_after = 0
            for a in appenders:
                for sid, acked in a.sessions.items():
                    stored = {m["seq"]: m["content"] for m in messages_of(client, sid)}
                    assert sorted(stored) == list(range(1, len(stored) + 1)), f"{sid}: seq has gaps"
                    for seq, content in stored.items():
                        assert acked.messages.get(seq, content) == content, f"{sid} {seq} changed"
                        assert seq in acked.messages or content in acked.in_doubt, f"{sid} {seq} never sent"
                    for seq, content in acked.messages.items():
                        if acked.at[seq] < began:
                            assert stored.get(seq) == content, f"{sid}: {seq}, acknowledged before, lost"
                        kept_after += seq in stored and acked.at[seq] >= began
                    # A request acknowledged before the backup, sent again under its key, is answered
                    # from the restored record: the same seqs, nothing appended twice.
                    assert acked.first_key is not None
                    key, body, seqs = acked.first_key
                    replay = client.post(
                        f"/sessions/{sid}/messages", json=body, headers={"Idempotency-Key": key}
                    )
                    assert replay.status_code == 201, replay.text
                    assert [m["seq"] for m in replay.json()["messages"]] == seqs
                    assert len(messages_of(client, sid)) == len(stored)
            view = client.get(f"/sessions/{indexed['id']}").json()
            assert (view["index_status"], view["indexed_at"]) == ("ready", indexed["indexed_at"])
            assert memory_finds(client, indexed["id"], "gardening"), "memory came back without re-embedding"
    finally:
        again.stop()


def test_check_and_restore_refuse_a_damaged_backup_in_one_line(tmp_path: Path) -> None:
    data, dest, target = tmp_path / "data", tmp_path / "backup", tmp_path / "restored"
    server = ServerProcess(data, [], ENV).wait_ready()
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
            sid = client.post("/sessions", json={"name": "s"}).json()["id"]
            said = {"role": "user", "content": "hello"}
            assert client.post(f"/sessions/{sid}/messages", json=said).status_code == 201
        taken = cli("backup", str(dest), "--data-dir", str(data))
        assert taken.returncode == 0, taken.stderr
    finally:
        server.stop()
    assert cli("check", str(dest)).returncode == 0
    manifest = orjson.loads((dest / "backup.json").read_bytes())
    shard = next(s for s in manifest["shards"] if s["files"])
    damaged = dest / shard["directory"] / shard["files"][0]["name"]
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0x01
    damaged.write_bytes(bytes(content))

    checked = cli("check", str(dest))
    assert checked.returncode == 1, checked.stdout
    assert "REFUSED: the backup is damaged" in checked.stdout
    one_line_refusal(cli("restore", str(dest), "--data-dir", str(target)), 2, "the backup is damaged")
    assert empty_or_absent(target)


def say(client: httpx.Client, sid: str, content: str) -> None:
    answer = client.post(f"/sessions/{sid}/messages", json={"role": "user", "content": content})
    assert answer.status_code == 201, answer.text


def contents(server: ServerProcess, key: str, sid: str) -> list[str] | None:
    """A session's messages on `server`, None when it has no such session."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        answer = client.get(f"/sessions/{sid}")
        if answer.status_code == 404:
            return None
        assert answer.status_code == 200, answer.text
        return [m["content"] for m in answer.json()["messages"]]


def held(data_dir: Path) -> dict[str, bytes]:
    """A restored directory's snapshots and log segments, by path: what a start recovers from."""
    files = [*data_dir.glob("shards/*/*"), *data_dir.glob("memory/*/*")]
    return {str(f.relative_to(data_dir)): f.read_bytes() for f in files if f.suffix in (".log", ".snap")}


def test_restore_to_a_moment_between_two_writes_and_from_an_incremental_backup(tmp_path: Path) -> None:
    data, archive = tmp_path / "data", tmp_path / "archive"
    full, incremental = tmp_path / "full", tmp_path / "incremental"
    # The API key is in the data directory's keys file, which a backup holds and a restore puts back.
    key = cli("keys", "create", "--org", "backup", "--data-dir", str(data)).stdout.strip()
    keyed = {"RAY_ADDRESS": ""}
    # The archive's timer never fires here: the graceful stop alone must leave every shard's
    # archived log complete to the stop, idle shards included.
    archiving = {
        "SESSION_ENGINE_DURABILITY__ARCHIVE_DIR": str(archive),
        "SESSION_ENGINE_DURABILITY__ARCHIVE_TIMEOUT_S": "3600",
    }
    server = ServerProcess(data, [], {**keyed, **archiving}).wait_ready()
    try:
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
            sid = client.post("/sessions", json={"name": "pitr"}).json()["id"]
            say(client, sid, "before the backup")
            taken = cli("backup", str(full), "--data-dir", str(data), "--json")
            assert taken.returncode == 0, taken.stderr
            one_line_refusal(cli("backup", str(full), "--data-dir", str(data)), 2, "is not empty")
            say(client, sid, "A")
            time.sleep(0.2)
            moment = int(time.time() * 1000)  # after A's answer, before B is sent
            time.sleep(0.2)
            say(client, sid, "B")
            later = client.post("/sessions", json={"name": "after the moment"}).json()["id"]
        more = cli("backup", str(incremental), "--incremental", "--from", str(full), "--data-dir", str(data))
        assert more.returncode == 0, more.stderr
        # The final snapshot seals the segment holding A and B (archived), and each shard with
        # nothing logged since its last seal records in the archive that nothing was, up to now.
        os.kill(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(120) == 0, server.output()
    finally:
        server.stop()
    cluster_id = orjson.loads(taken.stdout)["cluster_id"]
    assert list((archive / cluster_id / "shards").iterdir()), "sealed segments reached the archive"

    # Refused, each in one line with exit 2, creating nothing.
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "something").write_text("mine")
    refused = cli("restore", str(full), "--data-dir", str(occupied))
    one_line_refusal(refused, 2, "is not empty")
    assert [p.name for p in occupied.iterdir()] == ["something"]
    other = tmp_path / "other-archive"
    (other / "cl_another_cluster").mkdir(parents=True)
    nowhere = tmp_path / "nowhere"
    refused = cli(
        "restore", str(full), "--archive", str(other), "--until", str(moment), "--data-dir", str(nowhere)
    )
    one_line_refusal(refused, 2, f"holds no log of cluster {cluster_id}")
    assert not nowhere.exists()
    past = str(int(time.time() * 1000) + 3_600_000)  # after every shard's archived log ends
    refused = cli(
        "restore", str(full), "--archive", str(archive), "--until", past, "--data-dir", str(nowhere)
    )
    one_line_refusal(refused, 2, "is complete only up to")
    assert not nowhere.exists()

    to_the_moment = tmp_path / "to-the-moment"
    until = cli(
        "restore",
        str(full),
        "--archive",
        str(archive),
        "--until",
        str(moment),
        "--data-dir",
        str(to_the_moment),
    )
    assert until.returncode == 0, until.stderr
    whole = tmp_path / "whole"
    assert cli("restore", str(full), "--archive", str(archive), "--data-dir", str(whole)).returncode == 0
    assert cli("check", str(full), "--archive", str(archive)).returncode == 0
    chained = tmp_path / "chained"
    assert cli("restore", str(incremental), "--data-dir", str(chained)).returncode == 0

    # The full backup and the archive hold every record the chain of backups holds (and any a
    # shard logged after the incremental backup); the moment's restore holds fewer.
    chain_held, whole_held, moment_held = held(chained), held(whole), held(to_the_moment)
    assert chain_held.keys() == whole_held.keys() == moment_held.keys()
    assert all(whole_held[path].startswith(content) for path, content in chain_held.items())
    assert all(content.startswith(moment_held[path]) for path, content in chain_held.items())
    assert chain_held != moment_held
    for restored, expected, has_later in (
        (to_the_moment, ["before the backup", "A"], False),
        (chained, ["before the backup", "A", "B"], True),
    ):
        again = ServerProcess(restored, [], keyed).wait_ready()
        try:
            assert contents(again, key, sid) == expected, restored.name
            assert (contents(again, key, later) is not None) == has_later, restored.name
        finally:
            again.stop()

    manifest = orjson.loads((incremental / "backup.json").read_bytes())
    assert manifest["incremental_from"]["backup_id"] == orjson.loads(taken.stdout)["backup_id"]
    sessions = [s for s in manifest["shards"] if s["kind"] == "session"]
    # Each shard still held every record since the full backup's watermark: only records are
    # copied, and a shard that held some at the full backup continues from there (one that held
    # none is copied from its first record, as a full backup would).
    assert {f["kind"] for s in sessions for f in s["files"]} <= {"log"}
    base = {s["index"]: s for s in orjson.loads(taken.stdout)["shards"] if s["kind"] == "session"}
    for shard in sessions:
        if base[shard["index"]]["lsn"] > 0:
            assert shard["snapshot_lsn"] is None and shard["from_lsn"] == base[shard["index"]]["lsn"] + 1, (
                shard
            )

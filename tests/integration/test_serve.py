"""`session-engine serve` as a user starts it: keys, workers, and its own embedded Ray."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.server import ServerProcess, joined_server


def _key_printed(output: str) -> str | None:
    match = re.search(r"^\s+(sek_[A-Za-z0-9_-]{43})\s*$", output, re.MULTILINE)
    return match.group(1) if match else None


def test_first_start_prints_a_default_key_once_and_a_restart_keeps_it(
    tmp_data: Path, ray_address: str
) -> None:
    first = joined_server(tmp_data, ray_address, {"SESSION_ENGINE_RAY__NAMESPACE": "restart-test"})
    try:
        key = _key_printed(first.output())
        assert key is not None, first.output()
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{first.url}/sessions", json={"name": "a"}, headers=auth).status_code == 201
    finally:
        first.stop()
    assert key not in (tmp_data / "keys.json").read_text()
    log_lines = [line for line in first.output().splitlines() if line.startswith("{")]
    assert log_lines and not any(key in line for line in log_lines), "the key is printed, never logged"

    second = joined_server(tmp_data, ray_address, first.env)  # the same shards, a new gateway
    try:
        assert _key_printed(second.output()) is None
        assert httpx.get(f"{second.url}/sessions", headers=auth).status_code == 200
    finally:
        second.stop()


def _keys(tmp_data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "session_engine", "keys", *args, "--data-dir", str(tmp_data)]
    return subprocess.run(command, capture_output=True, text=True, check=True)


def _answer_within(url: str, key: str, status: int, timeout_s: float = 5.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        got = httpx.get(f"{url}/sessions", headers={"Authorization": f"Bearer {key}"}).status_code
        if got == status or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_keys_created_and_revoked_take_effect_in_a_running_server(tmp_data: Path, ray_address: str) -> None:
    key = _keys(tmp_data, "create", "--org", "acme").stdout.strip()
    server = joined_server(tmp_data, ray_address, {})
    try:
        assert _key_printed(server.output()) is None, "a keys file exists, so no default key is made"
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{server.url}/sessions", json={"name": "a"}, headers=auth).status_code == 201

        later = _keys(tmp_data, "create", "--org", "globex").stdout.strip()
        assert _answer_within(server.url, later, 200) == 200, "a new key works without a restart"
        listed = _keys(tmp_data, "list").stdout
        assert "acme" in listed and "globex" in listed and key not in listed and later not in listed
        acme_id = next(line.split()[0] for line in listed.splitlines() if " acme " in line)
        _keys(tmp_data, "revoke", acme_id[:8])
        assert _answer_within(server.url, key, 401) == 401, "a revoked key is refused without a restart"
        assert _answer_within(server.url, later, 200) == 200
    finally:
        server.stop()


def test_several_gateway_workers_share_the_same_shards(tmp_data: Path, ray_address: str) -> None:
    server = joined_server(tmp_data, ray_address, {"SESSION_ENGINE_API_KEYS": "k=acme"}, "--workers", "2")
    try:
        auth = {"Authorization": "Bearer k"}
        with httpx.Client(base_url=server.url, headers=auth) as client:
            ids = [client.post("/sessions", json={"name": f"s{i}"}).json()["id"] for i in range(20)]
            for sid in ids:  # fresh connections land on either worker; all see every session
                with httpx.Client(base_url=server.url, headers=auth) as fresh:
                    assert fresh.get(f"/sessions/{sid}").status_code == 200
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("http_server", ["uvicorn", "granian"])
def test_workers_serve_the_api_and_stop_gracefully_under_writes(
    tmp_data: Path, ray_address: str, http_server: str
) -> None:
    """Two gateway workers on either HTTP server: the app's lifespan (Ray joined, shards found), a
    stop on SIGTERM with exit 0 while appends keep coming, each one answered with a 201, and every write
    acknowledged there found again. Each worker joins Ray after its HTTP server set the handler that
    stops it gracefully, and Ray's own (SystemExit wherever the worker is) must not replace it: it
    cut requests in flight short with a 500. Unlike uvicorn, granian may drop the answer of the
    request in flight when it stops (seen here: applied, its connection closed unanswered), as the
    docs say; a retry under an Idempotency-Key is safe."""
    env = {"SESSION_ENGINE_API_KEYS": "k=acme", "SESSION_ENGINE_RAY__NAMESPACE": f"{http_server}-test"}
    server = joined_server(tmp_data, ray_address, env, "--http-server", http_server, "--workers", "2")
    auth = {"Authorization": "Bearer k"}
    try:
        with httpx.Client(base_url=server.url, headers=auth) as client:
            sid = client.post("/sessions", json={"name": f"on {http_server}"}).json()["id"]
            batch = {"messages": [{"role": "user", "content": f"m{i}"} for i in range(3)]}
            assert client.post(f"/sessions/{sid}/messages", json=batch).status_code == 201
            assert client.get("/sessions/nope").json()["code"] == "NOT_FOUND"
            assert client.get("/readyz").json()["status"] == "ready"
            # Appends keep coming while it stops.
            answers: list[int] = []
            first_answered = threading.Event()

            def append_during_stop() -> None:
                with httpx.Client(base_url=server.url, headers=auth, timeout=30) as slow:
                    for i in range(20):
                        try:
                            body = {"role": "user", "content": f"late {i}"}
                            answers.append(slow.post(f"/sessions/{sid}/messages", json=body).status_code)
                        except httpx.HTTPError:
                            return
                        finally:
                            first_answered.set()

            writer = threading.Thread(target=append_during_stop)
            writer.start()
            # The stop comes once the writer is under way: on a slow machine its first request
            # could otherwise arrive only after the stop began, and find the port closed.
            assert first_answered.wait(30)
            server.proc.send_signal(signal.SIGTERM)
            writer.join(60)
        assert server.proc.wait(60) == 0, server.output()
    finally:
        server.stop()
    assert answers and set(answers) == {201}, answers  # each write it took was answered, and stored
    again = joined_server(tmp_data, ray_address, env)
    try:
        view = httpx.get(f"{again.url}/sessions/{sid}", headers=auth).json()
        assert 3 + len(answers) <= view["message_count"] <= 3 + len(answers) + 1
    finally:
        again.stop()


def test_serve_starts_its_own_ray_when_given_no_address_and_stops_cleanly(
    tmp_data: Path, ray_address: str
) -> None:
    server = ServerProcess(
        tmp_data, [], {"SESSION_ENGINE_API_KEYS": "k=acme", "RAY_ADDRESS": ""}
    ).wait_ready()
    try:
        serving = next(json.loads(line) for line in server.output().splitlines() if '"msg":"serving"' in line)
        assert serving["ray"] != ray_address, "a Ray of its own, not the one already running here"
        auth = {"Authorization": "Bearer k"}
        sid = httpx.post(f"{server.url}/sessions", json={"name": "embedded"}, headers=auth).json()["id"]
        assert httpx.get(f"{server.url}/sessions/{sid}", headers=auth).json()["name"] == "embedded"
    finally:
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(60) == 0, server.output()
        server.stop()


def test_a_bad_setting_stops_serve_with_a_message_naming_it(tmp_data: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "session_engine", "serve", "--data-dir", str(tmp_data), "--shards", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "shards" in result.stderr and "Traceback" not in result.stderr

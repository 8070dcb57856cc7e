"""A server started on the data an older release wrote (tests/fixtures/data-format-1, on a copy)
serves it through HTTP as that release did: every session, message, context and vector, and a
session-memory query finds the session it indexed without indexing it again. A data directory a
newer release wrote stops `session-engine serve` with one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from benchmarks.server import ServerProcess, free_port, joined_server
from engine.storage.layout import FORMAT_VERSION, LAYOUT_FILE

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "data-format-1"
EXPECTED: dict[str, Any] = orjson.loads((FIXTURE / "expected.json").read_bytes())


@pytest.fixture(scope="module")
def client(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    data = Path(shutil.copytree(FIXTURE / "data", tmp_path_factory.mktemp("format-1") / "data"))
    server: ServerProcess = joined_server(data, ray_address, EXPECTED["server_env"])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http
    finally:
        server.stop()


def get(client: httpx.Client, org: str, path: str) -> httpx.Response:
    return client.get(path, headers={"Authorization": f"Bearer {EXPECTED['keys'][org]}"})


def post(client: httpx.Client, org: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(path, json=body, headers={"Authorization": f"Bearer {EXPECTED['keys'][org]}"})


def test_every_session_is_served_as_the_older_release_served_it(client: httpx.Client) -> None:
    for expected in EXPECTED["sessions"]:
        response = get(client, expected["org"], f"/sessions/{expected['id']}")
        assert response.status_code == 200, response.text
        view = response.json()
        for field in ("id", "name", "message_count", "context", "version", "expires_at"):
            assert view[field] == expected[field], (expected["name"], field)
        assert view["messages"] == expected["messages"], expected["name"]
        # An active session of the fixture reaches its deadline (at most limits.max_ttl_s after the
        # fixture was made) and then reads as expired, as any session would.
        past_deadline = expected["status"] == "active" and time.time() * 1000 >= expected["expires_at"]
        assert view["status"] == ("expired" if past_deadline else expected["status"]), expected["name"]


def test_another_organizations_key_does_not_reach_them(client: httpx.Client) -> None:
    acme = next(s for s in EXPECTED["sessions"] if s["org"] == "acme")
    assert get(client, "globex", f"/sessions/{acme['id']}").status_code == 404


def test_every_vector_is_found_with_its_metadata(client: httpx.Client) -> None:
    for org, by_namespace in EXPECTED["vectors"].items():
        for namespace, ids in by_namespace.items():
            body = {"namespace": namespace, "query_text": "travel", "top_k": 10}
            response = post(client, org, "/vectors/query", body)
            assert response.status_code == 200, response.text
            found = {m["id"]: m["metadata"] for m in response.json()["matches"]}
            assert found == {i: EXPECTED["vector_metadata"][i] for i in ids}


def test_session_memory_finds_the_indexed_session_as_it_did(client: httpx.Client) -> None:
    indexed = EXPECTED["indexed"]
    view = get(client, "acme", f"/sessions/{indexed['session_id']}").json()
    assert (view["index_status"], view["summary"]) == ("ready", indexed["summary"])
    response = post(client, "acme", "/vectors/query", indexed["query"])
    assert response.status_code == 200, response.text
    assert response.json()["matches"][0]["id"] == indexed["session_id"] == EXPECTED["memory_matches"][0]


def test_serve_on_a_newer_data_directory_exits_with_one_line(tmp_path: Path) -> None:
    data = Path(shutil.copytree(FIXTURE / "data", tmp_path / "data"))
    layout = orjson.loads((data / LAYOUT_FILE).read_bytes())
    (data / LAYOUT_FILE).write_bytes(orjson.dumps({**layout, "format": FORMAT_VERSION + 1}))
    command = [
        sys.executable,
        "-m",
        "session_engine",
        "serve",
        "--data-dir",
        str(data),
        "--port",
        str(free_port()),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"session-engine: {data / LAYOUT_FILE} was written by a newer release "
        f"(format {FORMAT_VERSION + 1}); this release reads format {FORMAT_VERSION}\n"
    )

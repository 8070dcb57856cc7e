"""An organization's vectors in its export, through HTTP on the real gateway and Ray: exported with
its sessions, deleted, imported back and found as they were; imported again and skipped; a vector
of the wrong dimension refused by its line; a client that goes away mid-export leaves no cursor
open on any shard; `session-engine export` / `import --org` move one organization's sessions
and vectors into another's on the running cluster, with no API key; and an export whose reader
closes its standard output exits quietly with no cursor left open."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import ray

from benchmarks.server import ServerProcess
from engine.memory.ops import OpenVectorExports
from engine.runtime.controller import running_config
from engine.runtime.names import memory_names, shard_names
from engine.sessions.ops import OpenExports

from .conftest import ORGS, Api
from .test_export_import import NDJSON, everything, export, fill, wait_indexed

pytestmark = pytest.mark.integration
DIM = 8
NAMESPACE_ENV = "SESSION_ENGINE_RAY__NAMESPACE"
SUMMARY_FIELDS = (
    "summary", "summary_status", "summary_error", "summary_attempts", "summary_provenance", "index_status",
    "indexed_at", "updated_at",
)  # fmt: skip


@pytest.fixture(scope="module")
def ray_client(ray_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_server.url, timeout=120) as client:
        yield client


def tenant(client: httpx.Client, number: int) -> Api:
    return Api(client, ORGS[number])


def values(n: int, seed: int, dim: int = DIM) -> list[list[float]]:
    return np.random.default_rng(seed).standard_normal((n, dim)).round(4).tolist()  # type: ignore[no-any-return]


def fill_vectors(api: Api) -> None:
    """Two namespaces of the organization's own: vectors of its values, and texts the server embeds."""
    rows = values(5, seed=1)
    own = [{"id": f"v{i}", "values": row, "metadata": {"n": i, "tag": "own"}} for i, row in enumerate(rows)]
    said = ["trams climb the hills of Lisbon", "pastel de nata at Belem", "fado in Alfama at night"]
    texts = [{"id": f"t{i}", "text": text, "metadata": {"i": i}} for i, text in enumerate(said)]
    for namespace, vectors in (("numbers", own), ("notes", texts)):
        answer = api.post("/vectors/upsert", json={"namespace": namespace, "vectors": vectors})
        assert answer.status_code == 200, answer.text


def memory_of(api: Api) -> dict[str, Any]:
    """Every vector as the query routes show it: each namespace's full ranking for a probe, and a
    lexical search for each text."""

    def ranking(**query: Any) -> list[tuple[str, float, dict[str, Any]]]:
        answer = api.post("/vectors/query", json={"top_k": 50, **query})
        assert answer.status_code == 200, answer.text
        return [(m["id"], round(m["score"], 4), m["metadata"]) for m in answer.json()["matches"]]

    return {
        "numbers": ranking(namespace="numbers", vector=values(1, seed=9)[0]),
        "notes": ranking(namespace="notes", query_text="Lisbon at night"),
        "words": [
            ranking(namespace="notes", query_text=word, mode="lexical") for word in ("trams", "nata", "fado")
        ],
    }


def lines_of(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines()]


def test_an_organizations_vectors_are_exported_deleted_and_imported_back_as_they_were(
    ray_client: httpx.Client,
) -> None:
    api = tenant(ray_client, 640)
    ids = fill(api)
    fill_vectors(api)
    wait_indexed(api, ids[0])
    sessions, memory = everything(api, ids), memory_of(api)
    body = export(api)
    lines = lines_of(body)
    assert any(key.startswith("memory-") for key in lines[0]["watermarks"])
    assert lines[-1] == {"kind": "end", "sessions": 3, "messages": 6, "vectors": 8}
    vectors = {(v["namespace"], v["id"]): v for v in lines if v["kind"] == "vector"}
    assert vectors[("notes", "t1")]["text"] == "pastel de nata at Belem"
    assert vectors[("numbers", "v2")]["metadata"] == {"n": 2, "tag": "own"}
    assert all(namespace != "session-memory" for namespace, _ in vectors)

    for sid in ids:
        assert api.delete(f"/sessions/{sid}").status_code == 204
    for namespace in ("numbers", "notes"):
        held = [i for n, i in vectors if n == namespace]
        deleted = api.post("/vectors/delete", json={"namespace": namespace, "ids": held})
        assert deleted.json()["deleted"] == len(held)
    answer = api.post("/import", content=body, headers=NDJSON)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "imported": {"sessions": 3, "messages": 6, "vectors": 8},
        "skipped": 0,
        "errors": [],
        "errors_omitted": 0,
    }
    wait_indexed(api, ids[0])
    assert memory_of(api) == memory
    after = everything(api, ids)
    for sid in ids:
        b, a = dict(sessions[sid]), dict(after[sid])
        if sid == ids[0]:  # its summary may be made here (test_export_import compares a ready one)
            for key in ("summary", "summary_provenance", "indexed_at", "updated_at"):
                b.pop(key), a.pop(key)
        assert a == b
    found = api.post("/vectors/query", json={"namespace": "session-memory", "query_text": "Lisbon trams"})
    assert ids[0] in {m["id"] for m in found.json()["matches"]}

    again = api.post("/import", content=body, headers=NDJSON)
    assert again.json() == {
        "imported": {"sessions": 0, "messages": 0, "vectors": 0},
        "skipped": 11,
        "errors": [],
        "errors_omitted": 0,
    }
    assert memory_of(api) == memory
    unchanged = {(v["namespace"], v["id"]): v for v in lines_of(export(api)) if v["kind"] == "vector"}
    assert set(unchanged) == set(vectors)
    for key, line in vectors.items():
        assert {**unchanged[key], "values": None} == {**line, "values": None}
        assert np.allclose(unchanged[key]["values"], line["values"], atol=1e-6)


def test_a_vector_of_the_wrong_dimension_is_in_the_errors_with_its_line(ray_client: httpx.Client) -> None:
    api = tenant(ray_client, 641)
    fill_vectors(api)
    lines = lines_of(export(api))
    wrong = {
        "kind": "vector",
        "namespace": "numbers",
        "id": "short",
        "values": [1.0, 2.0],
        "text": None,
        "metadata": {},
    }
    zero = {**wrong, "id": "zero", "values": [0.0] * DIM}
    end = {**lines[-1], "vectors": lines[-1]["vectors"] + 2}
    body = b"".join(orjson.dumps(line) + b"\n" for line in [*lines[:-1], wrong, zero, end])
    answer = api.post("/import", content=body, headers=NDJSON).json()
    assert answer["imported"]["vectors"] == 0 and answer["skipped"] == 8
    errors = {e["line"]: e["error"] for e in answer["errors"]}
    assert set(errors) == {len(lines), len(lines) + 1}
    assert "dimension 8, not 2" in errors[len(lines)]
    assert "all zeros" in errors[len(lines) + 1]
    probe = api.post(
        "/vectors/query", json={"namespace": "numbers", "vector": values(1, seed=9)[0], "top_k": 50}
    )
    assert {m["id"] for m in probe.json()["matches"]} == {f"v{i}" for i in range(5)}


def open_cursors(namespace: str) -> list[int]:
    """Every session and memory shard's count of open export cursors, asked through Ray."""
    config = running_config(namespace)
    assert config is not None
    counts = []
    for name in shard_names(config):
        (answer,) = ray.get(ray.get_actor(name, namespace=namespace).answer.remote([OpenExports()]))
        counts.append(answer["exports"])
    for name in memory_names(config):
        (answer,) = ray.get(ray.get_actor(name, namespace=namespace).handle.remote([OpenVectorExports()]))
        counts.append(answer["exports"])
    return counts


def fill_big(api: Api, n: int, seed: int) -> None:
    """`n` vectors of 1024 numbers in namespace big: an export far longer than a pipe holds."""
    rows = np.random.default_rng(seed).standard_normal((n, 1024)).round(3).tolist()
    for start in range(0, n, 100):
        batch = [{"id": f"big{start + i}", "values": row} for i, row in enumerate(rows[start : start + 100])]
        assert api.post("/vectors/upsert", json={"namespace": "big", "vectors": batch}).status_code == 200


def test_a_client_that_goes_away_mid_export_leaves_no_cursor_open(
    ray_client: httpx.Client, ray_server: ServerProcess
) -> None:
    api = tenant(ray_client, 642)
    fill_big(api, 1500, seed=3)
    namespace = ray_server.env[NAMESPACE_ENV]
    with api.client.stream("GET", "/export", headers=api.auth) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()
        received = next(chunks)
        while received.count(b"\n") < 2:  # the header and a page
            received += next(chunks)
        assert any(open_cursors(namespace)), "the export is still streaming"
    deadline = time.monotonic() + 30
    while any(counts := open_cursors(namespace)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(counts), counts


def cli_command(ray_address: str, namespace: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of an operator command on the test cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_ENGINE_")}
    env[NAMESPACE_ENV] = namespace
    return [sys.executable, "-m", "session_engine", *args, "--ray-address", ray_address], env


def cli(
    ray_address: str, namespace: str, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    command, env = cli_command(ray_address, namespace, *args)
    return subprocess.run(command, env=env, input=stdin, capture_output=True, check=False, timeout=300)


def test_the_operator_exports_one_organization_and_imports_it_into_another(
    ray_client: httpx.Client, ray_server: ServerProcess, ray_address: str, tmp_path: Path
) -> None:
    source, target = tenant(ray_client, 643), tenant(ray_client, 644)
    ids = fill(source)
    fill_vectors(source)
    namespace = ray_server.env[NAMESPACE_ENV]
    out = tmp_path / "org.ndjson"
    exported = cli(ray_address, namespace, "export", "--org", source.org, "--output", str(out))
    assert exported.returncode == 0, exported.stderr.decode()
    lines = lines_of(out.read_bytes())
    assert lines[0]["org"] == source.org and lines[-1]["vectors"] == 8

    imported = cli(ray_address, namespace, "import", str(out), "--org", target.org)
    assert imported.returncode == 0, imported.stderr.decode()
    assert orjson.loads(imported.stdout) == {
        "imported": {"sessions": 3, "messages": 6, "vectors": 8},
        "skipped": 0,
        "errors": [],
        "errors_omitted": 0,
    }
    for sid in ids:
        theirs, ours = source.get(f"/sessions/{sid}").json(), target.get(f"/sessions/{sid}").json()
        for key in SUMMARY_FIELDS:  # the close's job runs again in the organization imported into
            theirs.pop(key), ours.pop(key)
        assert ours == theirs
    assert memory_of(target)["numbers"] == memory_of(source)["numbers"]

    again = cli(ray_address, namespace, "import", "-", "--org", target.org, stdin=out.read_bytes())
    assert again.returncode == 0 and orjson.loads(again.stdout)["skipped"] == 11
    cut = cli(ray_address, namespace, "import", "-", stdin=b"\n".join(out.read_bytes().splitlines()[:-1]))
    assert cut.returncode == 2
    said = cut.stderr.decode()  # Ray's own warnings come first
    last = said.strip().splitlines()[-1]
    assert last.startswith(f"session-engine import: line {len(lines)}: ") and "Traceback" not in said


def test_an_export_whose_reader_goes_away_exits_quietly_and_closes_its_cursors(
    ray_client: httpx.Client, ray_server: ServerProcess, ray_address: str
) -> None:
    api = tenant(ray_client, 645)
    fill_big(api, 300, seed=4)
    namespace = ray_server.env[NAMESPACE_ENV]
    command, env = cli_command(ray_address, namespace, "export", "--org", api.org)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as export:
        assert export.stdout is not None and export.stderr is not None
        assert export.stdout.read(100).startswith(b'{"kind":"header"')
        export.stdout.close()  # as `head` does
        said = export.stderr.read().decode()
        assert export.wait(timeout=120) == 1
    assert "session-engine export" not in said and "Traceback" not in said and "BrokenPipe" not in said
    deadline = time.monotonic() + 30
    while any(counts := open_cursors(namespace)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(counts), counts

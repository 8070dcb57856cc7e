"""GET /export and POST /import through HTTP on the real gateway and Ray: a tenant takes its sessions
out, deletes them, brings them back, and finds them as they were (memory included); a second import
skips everything; a bad line is named by its number; a body over limits.max_import_bytes is 413."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from benchmarks.server import ServerProcess
from engine.config import load_config
from engine.keys import KeyStore
from engine.memory.index import IndexParams
from engine.transfer.importing import Limits, max_import_line_bytes
from tests.support.local_shards import LocalMemoryTransport, LocalTransport

from .conftest import API_KEYS, ORGS, Api, assert_error

pytestmark = pytest.mark.integration
NDJSON = {"Content-Type": "application/x-ndjson"}
_orgs = iter(ORGS[610:629])


@pytest.fixture(scope="module")
def ray_client(ray_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_server.url, timeout=60) as client:
        yield client


@pytest.fixture
def tenant(ray_client: httpx.Client) -> Api:
    return Api(ray_client, next(_orgs))


def fill(api: Api) -> list[str]:
    ids = []
    for i in range(3):
        sid = api.new_session(name=f"trip {i}", context={"step": i})["id"]
        said = [{"role": "user", "content": f"Plan day {i} in Lisbon: trams and pastries"}]
        said.append({"role": "tool", "content": "42", "tool_call_id": "c1", "tool_name": "calc"})
        assert api.post(f"/sessions/{sid}/messages", json={"messages": said}).status_code == 201
        ids.append(sid)
    assert api.post(f"/sessions/{ids[0]}/close").status_code == 200
    assert api.post(f"/sessions/{ids[1]}/complete").status_code == 200
    return ids


def wait_indexed(api: Api, sid: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        session = dict(api.get(f"/sessions/{sid}").json())
        if session["index_status"] == "ready" and session["summary_status"] in ("ready", "failed"):
            return session
        time.sleep(0.1)
    raise AssertionError(f"{sid} not indexed in {timeout_s} s")


def everything(api: Api, ids: list[str]) -> dict[str, Any]:
    return {sid: api.get(f"/sessions/{sid}").json() for sid in ids}


def export(api: Api) -> bytes:
    response = api.get("/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return response.content


def test_a_tenant_exports_deletes_and_imports_back_the_same_sessions(tenant: Api) -> None:
    ids = fill(tenant)
    wait_indexed(tenant, ids[0])
    before = everything(tenant, ids)
    assert before[ids[0]]["summary_status"] == "ready", "the tiny summarizer's summary"
    body = export(tenant)
    lines = [orjson.loads(line) for line in body.splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["org"] == tenant.org
    assert lines[-1] == {"kind": "end", "sessions": 3, "messages": 6, "vectors": 0}
    for sid in ids:
        assert tenant.delete(f"/sessions/{sid}").status_code == 204
    answer = tenant.post("/import", content=body, headers=NDJSON)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "imported": {"sessions": 3, "messages": 6, "vectors": 0},
        "skipped": 0,
        "errors": [],
        "errors_omitted": 0,
    }
    wait_indexed(tenant, ids[0])
    after = everything(tenant, ids)
    for sid in ids:
        b, a = dict(before[sid]), dict(after[sid])
        if sid == ids[0]:  # its turns and summary indexed here, no new summary made
            assert a.pop("indexed_at") >= b.pop("indexed_at")
        if b["summary_provenance"] is not None:
            # A model upgrade still queued at export is not resumed by an import: the extract stays.
            b["summary_provenance"] = {k: v for k, v in b["summary_provenance"].items() if k != "upgrade"}
        assert a == b, "summary, provenance, status, attempts and index_status as exported"
    query = {"namespace": "session-memory", "query_text": "Lisbon trams", "top_k": 10}
    found = tenant.post("/vectors/query", json=query).json()["matches"]
    assert ids[0] in {m["id"] for m in found}
    query["query_text"] = before[ids[0]]["summary"]
    found = tenant.post("/vectors/query", json=query).json()["matches"]
    assert ids[0] in {m["id"] for m in found}, "found by its summary"

    again = tenant.post("/import", content=body, headers=NDJSON)
    assert again.json() == {
        "imported": {"sessions": 0, "messages": 0, "vectors": 0},
        "skipped": 3,
        "errors": [],
        "errors_omitted": 0,
    }


def test_a_bad_line_is_refused_with_its_number(tenant: Api) -> None:
    fill(tenant)
    lines = export(tenant).splitlines()
    broken = b"\n".join([*lines[:2], b"{not json", *lines[2:]])
    assert_error(tenant.post("/import", content=broken, headers=NDJSON), 422, "VALIDATION_ERROR")
    assert "line 3" in tenant.post("/import", content=broken, headers=NDJSON).text
    cut = b"\n".join(lines[:-1])
    assert (
        "end line"
        in assert_error(tenant.post("/import", content=cut, headers=NDJSON), 422, "VALIDATION_ERROR")["error"]
    )


def test_another_organizations_export_is_refused_for_a_tenant(tenant: Api, ray_client: httpx.Client) -> None:
    fill(tenant)
    body = export(tenant)
    other = Api(ray_client, next(_orgs))
    refused = assert_error(other.post("/import", content=body, headers=NDJSON), 403, "FORBIDDEN")
    assert "line 1" in refused["error"]


def test_an_import_over_the_limit_is_413(embedder: Any) -> None:
    config = load_config()
    config = config.model_copy(update={"limits": config.limits.model_copy(update={"max_import_bytes": 2048})})
    app = create_app(
        config,
        transport=lambda c: LocalTransport(c.shards),
        memory=lambda c: LocalMemoryTransport(c.memory.shards, IndexParams(), embedder.embed),
        keys=KeyStore.from_spec(API_KEYS),
    )
    with TestClient(app) as client:
        api = Api(client, ORGS[629])
        declared = api.post("/import", content=b"x" * 4096, headers=NDJSON)
        assert_error(declared, 413, "PAYLOAD_TOO_LARGE")
        streamed = api.post("/import", content=iter([b"x" * 1024] * 4), headers=NDJSON)
        assert streamed.status_code == 413


def local_app(embedder: Any, **limits: Any) -> Any:
    """The gateway on in-process shards, with these limits."""
    config = load_config()
    config = config.model_copy(update={"limits": config.limits.model_copy(update=limits)})
    return create_app(
        config,
        transport=lambda c: LocalTransport(c.shards),
        memory=lambda c: LocalMemoryTransport(c.memory.shards, IndexParams(), embedder.embed),
        keys=KeyStore.from_spec(API_KEYS),
    )


def test_a_line_longer_than_any_export_writes_is_413_with_its_number(embedder: Any) -> None:
    app = local_app(embedder, max_body_bytes=1024, max_message_bytes=1, max_context_bytes=2)
    config = app.state.config
    long_line = b"x" * (max_import_line_bytes(Limits(config.limits, config.memory)) + 1)
    with TestClient(app) as client:
        api = Api(client, ORGS[629])
        chunks = iter(
            [b'{"kind": "header"}\n', *(long_line[i : i + 65536] for i in range(0, len(long_line), 65536))]
        )
        refused = assert_error(api.post("/import", content=chunks, headers=NDJSON), 413, "PAYLOAD_TOO_LARGE")
        assert refused["details"]["line"] == 2


def test_an_import_is_held_to_the_importers_limits(embedder: Any) -> None:
    with TestClient(local_app(embedder)) as source:
        api = Api(source, ORGS[629])

        def closed(said: list[str], **body: Any) -> str:
            sid = api.new_session(**{"ttl_seconds": 60, **body})["id"]
            if said:
                messages = [{"role": "user", "content": text} for text in said]
                assert api.post(f"/sessions/{sid}/messages", json={"messages": messages}).status_code == 201
            assert api.post(f"/sessions/{sid}/complete").status_code == 200
            return sid

        refused = {
            closed([], name="a long name"): "name: at most 5",
            closed([], name="ttl", ttl_seconds=3600): "ttl_seconds: at most 100",
            closed([], name="big", context={"k": "x" * 100}): "the limit is 50",
            closed([], name="deep", context={"a": {"b": {"c": {}}}}): "nested deeper than 3",
            closed(["y" * 30], name="long"): "content is over 20 bytes",
            closed(["a", "b", "c"], name="many"): "max_messages_per_session is 2",
        }
        ok = closed(["hi"], name="ok")
        body = export(api)
    lines = body.splitlines()
    numbers = {orjson.loads(line)["id"]: n for n, line in enumerate(lines, 1) if b'"kind":"session"' in line}
    tight = local_app(
        embedder,
        max_name_chars=5,
        max_ttl_s=100,
        default_ttl_s=60,
        max_context_bytes=50,
        max_json_depth=3,
        max_message_bytes=20,
        max_messages_per_session=2,
    )
    with TestClient(tight) as target:
        api = Api(target, ORGS[629])
        answer = api.post("/import", content=body, headers=NDJSON).json()
        assert answer["imported"] == {"sessions": 1, "messages": 1, "vectors": 0}
        errors = {e["session_id"]: e for e in answer["errors"]}
        assert set(errors) == set(refused)
        for sid in refused:
            assert errors[sid]["line"] == numbers[sid]
            assert refused[sid] in errors[sid]["error"]
            assert_error(api.get(f"/sessions/{sid}"), 404, "NOT_FOUND")
        assert api.get(f"/sessions/{ok}").status_code == 200

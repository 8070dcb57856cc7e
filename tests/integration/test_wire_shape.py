"""The OpenAPI document and the real answers agree, for every route: a real gateway on the test
run's Ray is driven through each documented operation with a request that succeeds (a session
whose summary is ready, so every optional part of a view is there), and each answer is validated
against the schema the document declares for its status. Each operation that needs a key is also
sent without one, and its 401 checked the same way. An operation the document lists and this test
does not drive fails the test, so a new route cannot go unchecked."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from benchmarks.server import ServerProcess

from .conftest import ORGS

Operation = tuple[str, str]  # (method, path template)


@pytest.fixture(scope="module")
def client(ray_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_server.url, timeout=60) as http:
        yield http


class Checked:
    """Sends requests and checks each answer against the document."""

    def __init__(self, http: httpx.Client, document: dict[str, Any], org: str) -> None:
        self.http = http
        self.document = document
        self.auth = {"Authorization": f"Bearer key-{org}"}
        self.done: set[Operation] = set()

    def call(
        self, method: str, template: str, path: str, *, auth: bool = True, **kwargs: Any
    ) -> httpx.Response:
        headers = {**(self.auth if auth else {}), **kwargs.pop("headers", {})}
        response = self.http.request(method, path, headers=headers, **kwargs)
        self.check(method, template, response)
        return response

    def check(self, method: str, template: str, response: httpx.Response) -> None:
        operation = self.document["paths"][template][method.lower()]
        declared = operation["responses"].get(str(response.status_code))
        assert declared is not None, f"{method} {template} answered {response.status_code}, undeclared"
        content = declared.get("content", {})
        if not content:
            assert not response.content, f"{method} {template}: a body the document does not declare"
        else:
            media = response.headers["content-type"].split(";")[0]
            assert media in content, f"{method} {template}: {media} is not among {list(content)}"
            schema = content[media].get("schema")
            if media == "application/json" and schema is not None:
                validator = Draft202012Validator({**schema, "components": self.document["components"]})
                problems = [
                    f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                    for e in validator.iter_errors(response.json())
                ]
                assert not problems, f"{method} {template} {response.status_code}: {problems}"
        if 200 <= response.status_code < 300:
            self.done.add((method.upper(), template))

    def stream_first_event(self, template: str, path: str) -> str:
        with self.http.stream("GET", path, headers=self.auth) as response:
            self.check("GET", template, response)
            for line in response.iter_lines():
                if line.startswith("event:"):
                    return line.removeprefix("event:").strip()
        raise AssertionError(f"{path} ended without an event")


def _wait_ready(checked: Checked, sid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        view = checked.call("GET", "/sessions/{session_id}", f"/sessions/{sid}").json()
        if view["summary_status"] in ("ready", "failed") and view["index_status"] in ("ready", "failed"):
            return dict(view)
        time.sleep(0.2)
    raise AssertionError(f"{sid} has no summary after 120 s")


def test_every_route_answers_as_the_document_says(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    checked = Checked(client, document, ORGS[502])
    every = {(m.upper(), path) for path, ops in document["paths"].items() for m in ops}

    checked.call("GET", "/healthz", "/healthz", auth=False)
    checked.call("GET", "/readyz", "/readyz", auth=False)
    checked.call("GET", "/metrics", "/metrics", auth=False)

    created = checked.call(
        "POST", "/sessions", "/sessions", json={"name": "wire", "context": {"goal": "ship"}}
    ).json()
    sid = created["id"]
    one = f"/sessions/{sid}"
    assert checked.stream_first_event("/sessions/{session_id}/events", f"{one}/events") == "feed.ready"
    assert checked.stream_first_event("/events", "/events") == "feed.ready"
    messages = "/sessions/{session_id}/messages"
    checked.call("POST", messages, f"{one}/messages", json={"role": "user", "content": "plan the launch"})
    batch = {
        "messages": [
            {"role": "assistant", "content": "calling the tracker", "tool_call_id": "c1", "tool_name": "t"},
            {"role": "tool", "content": "three open bugs", "tool_call_id": "c1", "tool_name": "t"},
        ]
    }
    keyed = {"Idempotency-Key": "wire-batch"}
    checked.call("POST", messages, f"{one}/messages", headers=keyed, json=batch)
    replay = checked.call("POST", messages, f"{one}/messages", headers=keyed, json=batch)
    assert replay.headers["Idempotent-Replayed"] == "true"
    checked.call("PUT", "/sessions/{session_id}/context", f"{one}/context", json={"goal": "ship", "step": 2})
    checked.call("PATCH", "/sessions/{session_id}", one, json={"name": "wire, renamed"})
    forked = checked.call("POST", "/sessions/{session_id}/fork", f"{one}/fork", json={"at_seq": 2}).json()
    assert forked["forked_from"] == {"session_id": sid, "seq": 2}
    checked.call("GET", "/sessions", "/sessions", params={"limit": 1})
    checked.call("POST", "/sessions/{session_id}/close", f"{one}/close")
    ready = _wait_ready(checked, sid)
    assert ready["summary_provenance"] is not None and ready["messages"][1]["tool_name"] == "t"
    checked.call("POST", "/sessions/{session_id}/summarize", f"{one}/summarize")

    completed = checked.call("POST", "/sessions", "/sessions", json={"name": "done"}).json()["id"]
    checked.call("POST", "/sessions/{session_id}/complete", f"/sessions/{completed}/complete")

    checked.call(
        "POST",
        "/vectors/upsert",
        "/vectors/upsert",
        json={"namespace": "wire", "vectors": [{"id": "a", "text": "launch"}]},
    )
    checked.call(
        "POST", "/vectors/query", "/vectors/query", json={"namespace": "wire", "query_text": "launch"}
    )
    found = checked.call(
        "POST",
        "/vectors/query",
        "/vectors/query",
        json={"namespace": "session-memory", "query_text": "launch bugs"},
    ).json()
    assert found["matches"], "the session-memory answer is checked with a match in it"
    checked.call("POST", "/vectors/delete", "/vectors/delete", json={"namespace": "wire", "ids": ["a"]})
    exported = checked.call("GET", "/export", "/export").content
    ndjson = {"Content-Type": "application/x-ndjson"}
    checked.call("POST", "/import", "/import", content=exported, headers=ndjson)
    checked.call("DELETE", "/sessions/{session_id}", f"/sessions/{completed}")

    missed = every - checked.done
    assert not missed, f"operations this test does not drive: {sorted(missed)}"

    # Every operation that needs a key, sent without one: its 401 as the document declares it.
    open_routes = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
    for method, template in sorted(every - open_routes):
        response = checked.call(method, template, template.replace("{session_id}", sid), auth=False)
        assert response.status_code == 401, (method, template, response.status_code)

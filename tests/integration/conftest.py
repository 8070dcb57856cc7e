"""One real local Ray per test run; real gateway processes join it over HTTP on 127.0.0.1."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from benchmarks.server import ServerProcess, joined_server
from engine.config import load_config
from engine.keys import KeyStore
from engine.memory.index import IndexParams
from tests.support.local_shards import LocalMemoryTransport, LocalTransport

# The contract suites take organizations counting up from the first, the summary tests counting
# down from the last, and a few tests name their own from the middle; enough that they never meet
# (one of them once did at 200, and a memory query found another test's session).
ORGS = [f"org{i}" for i in range(1000)]
API_KEYS = ",".join(f"key-{org}={org}" for org in ORGS)


@pytest.fixture(autouse=True)
def _tiny_summarizer(servers_use_tiny_summarizer: None) -> None:
    """Servers started here summarize with the tiny model."""


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The default embedder (MiniLM from its package), loaded once for in-process apps."""
    from engine.models.embedder import Embedder

    return Embedder(None)


@pytest.fixture(scope="session")
def ray_server(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = joined_server(
        tmp_path_factory.mktemp("ray-server"), ray_address, {"SESSION_ENGINE_API_KEYS": API_KEYS}
    )
    try:
        yield server
    finally:
        server.stop()


class Api:
    """An HTTP client acting for one organization."""

    def __init__(self, client: httpx.Client, org: str) -> None:
        self.client = client
        self.org = org
        self.auth = {"Authorization": f"Bearer key-{org}"}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs["headers"] = {**self.auth, **kwargs.get("headers", {})}
        return self.client.request(method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    def new_session(self, **body: Any) -> dict[str, Any]:
        response = self.post("/sessions", json={"name": "test", **body})
        assert response.status_code == 201, response.text
        return dict(response.json())


@pytest.fixture(scope="session", params=["ray", "in-process"])
def http_client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """The contract suite runs against the real server on Ray and against the app in-process."""
    if request.param == "ray":
        server: ServerProcess = request.getfixturevalue("ray_server")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client
    else:
        config = load_config()
        embed = request.getfixturevalue("embedder").embed
        app = create_app(
            config,
            transport=lambda c: LocalTransport(c.shards),
            memory=lambda c: LocalMemoryTransport(c.memory.shards, IndexParams(), embed),
            keys=KeyStore.from_spec(API_KEYS),
        )
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client


_org_numbers = itertools.count()


@pytest.fixture
def api(http_client: httpx.Client) -> Api:
    """A client for an organization no other test in this run uses, so its lists start empty."""
    return Api(http_client, ORGS[next(_org_numbers) % len(ORGS)])


@pytest.fixture
def other_api(http_client: httpx.Client) -> Api:
    return Api(http_client, ORGS[next(_org_numbers) % len(ORGS)])


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = dict(response.json())
    assert set(body) == {"error", "code", "details", "hint"}, body
    assert body["code"] == code
    assert body["error"] and body["hint"]
    assert "Traceback" not in response.text
    return body

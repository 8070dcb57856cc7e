"""/readyz and /healthz on the app in process: sessions are served (200) while memory shards and
models still load, and the body says what is loading, drained or degraded; a session shard that
refuses is a 503; no unauthenticated answer names a server path. A memory query while the
embedder loads is 503 with Retry-After and a hint that says so."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray.exceptions import ActorDiedError, ActorUnavailableError

from api.app import create_app
from api.routes import health
from engine.config import load_config
from engine.errors import ModelsLoading, Unavailable
from engine.keys import KeyStore
from engine.memory.index import IndexParams
from engine.runtime import transports
from engine.runtime.ray_actors import restarting
from engine.runtime.transports import RayMemoryTransport
from engine.storage.identity import NotThisShardsData
from tests.support.local_shards import LocalMemoryTransport, LocalTransport

DATA_DIR = "/srv/secret-place/engine-data"
AUTH = {"Authorization": "Bearer k"}
LOADED = {"embedder": {"state": "idle", "model": "m"}, "summarizer": {"state": "idle", "workers": []}}


class Sessions(LocalTransport):
    """Session shards in process whose pings also say what a shard's condition holds, or that
    refuse every op."""

    def __init__(self, shards: int, condition: dict[str, Any], refusal: Exception | None = None) -> None:
        super().__init__(shards)
        for store in self.stores:
            store.condition = condition
        self.refusal = refusal

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]:
        if self.refusal is not None:
            return [self.refusal] * len(ops)
        return await super().call(shard, ops)


class Memory(LocalMemoryTransport):
    """Memory shards in process; `starting` ones do not answer, `restarting` ones raise what the
    Ray transport raises for a shard whose actor Ray is restarting; the models say `models`, or
    what a RayMemoryTransport over `ray_models` says."""

    def __init__(
        self,
        shards: int,
        starting: set[int],
        models: dict[str, Any],
        restarting: set[int] | None = None,
        ray_models: RayMemoryTransport | None = None,
    ) -> None:
        super().__init__(shards, IndexParams(), lambda texts: np.ones((len(texts), 4), np.float32) / 2)
        self.starting = starting
        self.models = models
        self.restarting = restarting or set()
        self.ray_models = ray_models

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]:
        if shard in self.starting:
            await asyncio.Event().wait()  # recovering: answers nothing yet
        if shard in self.restarting:
            raise restarting("memory shard", shard)
        return await super().call(shard, ops)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.models["embedder"].get("state") == "loading":
            raise ModelsLoading(["embedder"])
        return await super().embed(texts)

    async def ready(self) -> dict[str, Any]:
        if self.ray_models is not None:
            return await self.ray_models.ready()
        return self.models


class Probe:
    def __init__(self, actor: ModelActor) -> None:
        self._actor = actor

    async def remote(self) -> dict[str, Any]:
        if self._actor.failure is not None:
            raise self._actor.failure
        return self._actor.described


class ModelActor:
    """A model actor's handle: `describe.remote()` answers `described`, or raises like Ray's."""

    def __init__(self, described: dict[str, Any], failure: Exception | None = None) -> None:
        self.described = described
        self.failure = failure
        self.describe = Probe(self)


class Embedders:
    """NamedActors of embedders, without Ray's name lookup."""

    def __init__(self, *actors: ModelActor) -> None:
        self.actors = list(actors)
        self.died_calls: list[int] = []

    def __len__(self) -> int:
        return len(self.actors)

    def __getitem__(self, index: int) -> ModelActor:
        return self.actors[index]

    def died(self, index: int) -> None:
        self.died_calls.append(index)


def make_app(
    condition: dict[str, Any] | None = None,
    refusal: Exception | None = None,
    starting: frozenset[int] = frozenset(),
    models: dict[str, Any] | None = None,
    restarting: frozenset[int] = frozenset(),
    ray_models: RayMemoryTransport | None = None,
) -> FastAPI:
    return create_app(
        load_config(),
        transport=lambda c: Sessions(c.shards, condition or {}, refusal),
        memory=lambda c: Memory(
            c.memory.shards, set(starting), models or LOADED, set(restarting), ray_models
        ),
        keys=KeyStore.from_spec("k=acme"),
    )


@pytest.fixture(autouse=True)
def _short_loading_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "LOADING_TIMEOUT_S", 0.05, raising=False)


def readyz(app: FastAPI) -> tuple[int, dict[str, Any], str]:
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/readyz")
    return answer.status_code, answer.json(), answer.text


def test_everything_loaded_is_ready() -> None:
    status, body, _ = readyz(make_app())
    assert status == 200 and body["status"] == "ready" and body["loading"] == [], body
    assert body["shards"] == 2 and body["memory_shards"] == 2 and body["models"] == LOADED


def test_sessions_are_served_while_memory_and_models_load_and_the_body_says_what_loads() -> None:
    models = {"embedder": {"state": "loading"}, "summarizer": {"state": "loading", "workers": []}}
    app = make_app(starting=frozenset({1}), models=models)
    status, body, _ = readyz(app)
    assert status == 200 and body["status"] == "starting", body
    assert body["loading"] == ["memory-shard-1", "embedder", "summarizer"]
    with TestClient(app, raise_server_exceptions=False) as client:
        made = client.post("/sessions", json={"name": "served"}, headers=AUTH)
        assert made.status_code == 201
        query = client.post("/vectors/query", json={"query_text": "anything"}, headers=AUTH)
    assert query.status_code == 503 and query.headers["Retry-After"] == "2"
    error = query.json()
    assert set(error) == {"error", "code", "details", "hint"} and error["code"] == "UNAVAILABLE"
    assert error["details"]["loading"] == ["embedder"] and "models are loading" in error["hint"]


def test_a_model_that_failed_to_load_makes_the_engine_degraded() -> None:
    models = {
        **LOADED,
        "embedder": {"state": "failed", "error": f"OSError: {DATA_DIR}/models/x is not there"},
    }
    status, body, text = readyz(make_app(models=models))
    assert status == 200 and body["status"] == "degraded", body
    assert {"model": "embedder", "failed": "OSError: x is not there"} in body["notices"]
    assert DATA_DIR not in text


def test_a_summarizer_that_failed_to_load_is_a_notice_and_the_engine_stays_ready() -> None:
    """Summaries are ready at close with an extract; the model's text is only an upgrade."""
    models = {**LOADED, "summarizer": {"state": "failed", "error": "OSError: no model", "workers": []}}
    status, body, _ = readyz(make_app(models=models))
    assert status == 200 and body["status"] == "ready", body
    assert {"model": "summarizer", "failed": "OSError: no model"} in body["notices"]


def test_a_drained_engine_says_draining() -> None:
    status, body, _ = readyz(make_app(condition={"draining": True}))
    assert status == 200 and body["status"] == "draining", body
    assert {"shard": "session-0", "draining": True} in body["notices"]


def test_readiness_after_a_recovery_names_no_server_path() -> None:
    snapshot = f"{DATA_DIR}/shards/shard-0000/snapshot-00000000000000000042.snap"
    recovery = {
        "damaged_snapshots": [
            {
                "file": "snapshot-00000000000000000042.snap",
                "reason": f"{snapshot}: damaged record at byte offset 7 (bad trailer)",
                "set_aside": "snapshot-00000000000000000042.snap.damaged",
            }
        ],
        "cut_tails": [],
    }
    status, body, text = readyz(make_app(condition={"recovery": recovery}))
    assert status == 200 and DATA_DIR not in text and "/srv" not in text, text
    (damaged,) = body["notices"][0]["recovery"]["damaged_snapshots"]
    assert (
        damaged["reason"]
        == "snapshot-00000000000000000042.snap: damaged record at byte offset 7 (bad trailer)"
    )


def test_a_shard_that_refuses_its_directory_is_a_503_that_names_no_server_path() -> None:
    directory = f"{DATA_DIR}/shards/shard-0001"
    refusal = NotThisShardsData(directory, f"{directory} has no IDENTITY file")
    status, body, text = readyz(make_app(refusal=refusal))
    assert status == 503 and set(body) == {"error", "code", "details", "hint"}, body
    assert body["code"] == "UNAVAILABLE" and body["details"]["refused"] is True
    assert "shard-0001 has no IDENTITY file" in body["error"]
    assert DATA_DIR not in text and "/srv" not in text, text


def test_a_memory_shard_that_is_restarting_leaves_sessions_served_and_the_engine_degraded() -> None:
    """A memory shard whose actor Ray restarts raises Unavailable; sessions are still served, so
    /readyz stays 200 and says which shard is down."""
    app = make_app(restarting=frozenset({1}))
    status, body, _ = readyz(app)
    assert status == 200 and body["status"] == "degraded", body
    assert {"shard": "memory-1", "unavailable": "memory shard 1 is restarting"} in body["notices"]
    assert body["memory_shards"] == 2 and body["loading"] == []
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/sessions", json={"name": "served"}, headers=AUTH).status_code == 201


@pytest.mark.parametrize("failure", [ActorUnavailableError("restarting", None), ActorDiedError()])
def test_a_model_actor_that_ray_cannot_reach_leaves_sessions_served_and_the_engine_degraded(
    monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """The embedder's probe raises a Ray error (its actor restarting, or dead): the model is
    unavailable, a notice; the gateway still serves sessions, so /readyz stays 200."""
    pool = ModelActor({"state": "idle", "workers": [], "waiting": 0})
    monkeypatch.setattr(transports, "find_pool", lambda config, timeout_s=60.0: pool)
    embedders = Embedders(ModelActor({}, failure=failure))
    models = RayMemoryTransport(load_config(), cast(Any, None), cast(Any, embedders))
    status, body, _ = readyz(make_app(ray_models=models))
    assert status == 200 and body["status"] == "degraded", body
    assert body["models"]["embedder"]["state"] == "unavailable"
    assert body["models"]["summarizer"] == {"state": "idle", "workers": []}
    (notice,) = [n for n in body["notices"] if n.get("model") == "embedder"]
    assert notice["unavailable"].startswith("the embedder is restarting or unreachable")
    assert embedders.died_calls == ([0] if isinstance(failure, ActorDiedError) else [])


def test_a_summarizer_pool_that_is_not_found_leaves_the_engine_degraded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_found(config: Any, timeout_s: float = 60.0) -> Any:
        raise Unavailable("actors ['summarizer-pool'] not found in Ray namespace 'x'")

    monkeypatch.setattr(transports, "find_pool", not_found)
    embedders = Embedders(ModelActor(LOADED["embedder"]))
    models = RayMemoryTransport(load_config(), cast(Any, None), cast(Any, embedders))
    status, body, _ = readyz(make_app(ray_models=models))
    assert status == 200 and body["status"] == "degraded", body
    assert body["models"]["embedder"] == LOADED["embedder"]
    assert body["models"]["summarizer"]["state"] == "unavailable"


def test_a_read_only_shard_is_degraded_and_names_no_server_path() -> None:
    status, body, text = readyz(make_app(condition={"read_only": f"No space left on device: {DATA_DIR}"}))
    assert status == 200 and body["status"] == "degraded", body
    assert DATA_DIR not in text


def test_liveness_names_nothing() -> None:
    with TestClient(make_app(), raise_server_exceptions=False) as client:
        assert client.get("/healthz").json() == {"status": "ok"}


def test_an_absolute_path_is_cut_to_its_last_part_and_nothing_else_changes() -> None:
    assert health.without_paths(
        {"a": f"cannot read {DATA_DIR}/IDENTITY: denied", "b": ["ratio 1/2", "a/b"], "c": 3, "d": "(/x/y)"}
    ) == {"a": "cannot read IDENTITY: denied", "b": ["ratio 1/2", "a/b"], "c": 3, "d": "(y)"}


def test_paths_in_lists_and_a_data_directory_with_a_space_leave_nothing_behind() -> None:
    assert health.without_paths("dirs /srv/a,/srv/b; /srv/c") == "dirs a,b; c"
    known = ("/srv/my data",)
    cut = health.without_paths({"log": "at /srv/my data/shards/x.log"}, known)
    assert cut == {"log": "at my data/shards/x.log"} and "/srv" not in str(cut)

"""Which embedders indexing calls (engine.runtime.closing_ports.IndexingEmbedders): its own at the
lowest CPU priority while one answers with its model loaded, the query embedders (not urgent) when
the background embedders are missing, pending, loading or failed, and a bound on every call. Ray's
name lookup is replaced by a dict; the handles are fakes that answer or raise like Ray's."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from ray.exceptions import ActorDiedError

from engine.config import EngineConfig
from engine.errors import Unavailable
from engine.runtime import closing_ports, ray_actors
from engine.runtime.closing_ports import IndexingEmbedders

BACKGROUND = "embedder-background-0"


class Method:
    def __init__(self, actor: FakeEmbedder, name: str) -> None:
        self._actor = actor
        self._name = name

    async def remote(self, *args: Any) -> Any:
        self._actor.calls.append(self._name)
        if self._actor.hangs:
            await asyncio.Event().wait()  # a pending actor: Ray queues the call, it never answers
        if self._actor.failure is not None:
            raise self._actor.failure
        if self._name == "describe":
            return self._actor.described
        return self._actor.answer


class FakeEmbedder:
    def __init__(self, state: str = "idle") -> None:
        self.described: dict[str, Any] = {"state": state}
        self.answer: Any = np.ones((1, 4), np.float32)
        self.failure: Exception | None = None
        self.hangs = False
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Method:
        return Method(self, name)


class QueryEmbedders:
    """The query embedders' transport, as RayClosingPorts gives it."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    async def embed(self, texts: Sequence[str], *, urgent: bool = True) -> np.ndarray:
        self.calls.append(urgent)
        return np.zeros((len(texts), 4), np.float32)


@pytest.fixture
def named(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The actors Ray would find by name."""
    found: dict[str, Any] = {}

    def find_named(names: Sequence[str], config: EngineConfig, timeout_s: float) -> list[Any]:
        if any(name not in found for name in names):
            raise Unavailable(f"actors {list(names)} not found")
        return [found[name] for name in names]

    monkeypatch.setattr(closing_ports, "find_named", find_named)
    monkeypatch.setattr(ray_actors, "lookup", lambda name, config: found.get(name))
    return found


def embedders(query: QueryEmbedders, background_replicas: int = 1) -> IndexingEmbedders:
    config = EngineConfig(models={"embedder": {"background_replicas": background_replicas}})
    return IndexingEmbedders(config, lambda: query)  # type: ignore[arg-type,return-value]


async def test_indexing_embeds_on_its_own_embedder_once_it_has_its_model(named: dict[str, Any]) -> None:
    named[BACKGROUND] = background = FakeEmbedder()
    query = QueryEmbedders()
    indexing = embedders(query)
    assert (await indexing.embed(["a"])).tolist() == [[1.0] * 4]
    await indexing.embed(["b"])
    assert background.calls == ["describe", "embed", "embed"], "asked once, then called directly"
    assert query.calls == []


@pytest.mark.parametrize("state", ["loading", "failed"])
async def test_a_background_embedder_without_its_model_leaves_indexing_to_the_query_embedders(
    named: dict[str, Any], state: str
) -> None:
    named[BACKGROUND] = FakeEmbedder(state)
    query = QueryEmbedders()
    assert (await embedders(query).embed(["a"])).shape == (1, 4)
    assert query.calls == [False], "not urgent: queries still come first"


async def test_a_missing_background_embedder_leaves_indexing_to_the_query_embedders(
    named: dict[str, Any],
) -> None:
    query = QueryEmbedders()
    indexing = embedders(query)
    await indexing.embed(["a"])
    named[BACKGROUND] = FakeEmbedder()  # created later: found at the next call
    await indexing.embed(["b"])
    assert query.calls == [False]


async def test_a_pending_background_embedder_is_given_up_on_after_the_probe(
    named: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(closing_ports, "LOADING_PROBE_S", 0.01)
    named[BACKGROUND] = pending = FakeEmbedder()
    pending.hangs = True  # no node can place it
    query = QueryEmbedders()
    await embedders(query).embed(["a"])
    assert query.calls == [False]


async def test_a_background_embedder_that_dies_midway_fails_the_call(named: dict[str, Any]) -> None:
    named[BACKGROUND] = background = FakeEmbedder()
    query = QueryEmbedders()
    indexing = embedders(query)
    await indexing.embed(["a"])
    background.failure = ActorDiedError()
    with pytest.raises(Unavailable):
        await indexing.embed(["b"])  # the tick or the job's attempt is tried again
    assert query.calls == []


async def test_a_background_embedder_restarted_with_a_failed_model_falls_back(named: dict[str, Any]) -> None:
    named[BACKGROUND] = background = FakeEmbedder()
    query = QueryEmbedders()
    indexing = embedders(query)
    await indexing.embed(["a"])
    background.answer = Unavailable("the embedder failed to load")
    await indexing.embed(["b"])
    assert query.calls == [False]


async def test_an_indexing_embed_that_never_answers_is_bounded(
    named: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    named[BACKGROUND] = background = FakeEmbedder()
    indexing = embedders(QueryEmbedders())
    await indexing.embed(["a"])
    monkeypatch.setattr(closing_ports, "INDEXING_EMBED_TIMEOUT_S", 0.01)
    background.hangs = True
    with pytest.raises(Unavailable):
        await indexing.embed(["b"])


async def test_without_background_replicas_indexing_uses_the_query_embedders(named: dict[str, Any]) -> None:
    query = QueryEmbedders()
    await embedders(query, background_replicas=0).embed(["a"])
    assert query.calls == [False]

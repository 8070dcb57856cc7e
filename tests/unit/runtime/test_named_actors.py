"""How a gateway's call to a shard actor by name meets a dead or missing actor: a replacement is
called at once, and a missing one's 503 says why (moved, stopped, restarting). Ray's name lookup is
replaced by a dict; the handles are fakes that answer or raise like Ray's."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from engine.config import EngineConfig
from engine.errors import Unavailable
from engine.runtime import ray_actors
from engine.runtime.names import CONTROLLER_NAME
from engine.runtime.ray_actors import NamedActors

_ids = itertools.count()


class Method:
    def __init__(self, actor: FakeActor, name: str) -> None:
        self._actor = actor
        self._name = name

    async def remote(self, *args: Any) -> Any:
        self._actor.calls.append((self._name, args))
        if self._actor.failure is not None:
            raise self._actor.failure
        if self._name == "describe":
            return self._actor.described
        return [f"{self._actor._actor_id} answered {args}"]


class FakeActor:
    """Calls answer, or raise `failure`; `_actor_id` is what Ray's handles carry."""

    def __init__(self, failure: Exception | None = None, described: dict[str, Any] | None = None) -> None:
        self._actor_id = next(_ids)
        self.failure = failure
        self.described = described or {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Method:
        return Method(self, name)


@pytest.fixture
def named(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The actors Ray would find by name."""
    found: dict[str, Any] = {}
    monkeypatch.setattr(ray_actors, "lookup", lambda name, config: found.get(name))
    return found


def dead() -> ActorDiedError:
    return ActorDiedError()


async def test_a_call_that_finds_its_actor_replaced_goes_to_the_new_one_at_once(
    named: dict[str, Any],
) -> None:
    old, new = FakeActor(dead()), FakeActor()
    named["session-shard-0"] = new  # rebalance moved it: a new actor under the same name
    actors = NamedActors(["session-shard-0"], EngineConfig(), [old])
    answer = await actors.call(0, ["op"], "shard")
    assert answer == [f"{new._actor_id} answered (['op'],)"]
    assert len(new.calls) == 1
    assert await actors.call(0, ["op2"], "shard")  # and later calls go there directly
    assert len(old.calls) == 1 and len(new.calls) == 2


async def test_an_actor_restarting_under_its_own_id_is_not_called_again(named: dict[str, Any]) -> None:
    failed = FakeActor(dead())
    named["session-shard-0"] = failed  # Ray restarts a failed actor under the same id
    named[CONTROLLER_NAME] = FakeActor(described={"moving": []})
    actors = NamedActors(["session-shard-0"], EngineConfig(), [failed])
    with pytest.raises(Unavailable) as raised:
        await actors.call(0, ["op"], "shard")
    assert len(failed.calls) == 1, "a write in flight when it died may have been applied: no retry"
    assert raised.value.details == {"shard": 0, "state": "restarting"}
    assert "may or may not have been applied" in raised.value.hint


async def test_an_unavailable_actor_is_restarting(named: dict[str, Any]) -> None:
    actor = FakeActor(ActorUnavailableError("connection lost", None))
    actors = NamedActors(["memory-shard-1"], EngineConfig(), [actor])
    with pytest.raises(Unavailable) as raised:
        await actors.call(0, ["op"], "memory shard")
    assert raised.value.details == {"memory_shard": 0, "state": "restarting"}


async def test_a_shard_missing_while_rebalance_moves_it_is_moving(named: dict[str, Any]) -> None:
    named[CONTROLLER_NAME] = FakeActor(described={"moving": ["session-shard-1"]})
    handles = [FakeActor(), FakeActor(dead())]
    actors = NamedActors(["session-shard-0", "session-shard-1"], EngineConfig(), handles)
    with pytest.raises(Unavailable) as raised:
        await actors.call(1, ["op"], "shard")
    assert raised.value.details == {"shard": 1, "state": "moving"}
    assert "session-engine rebalance" in raised.value.hint and "restarting" not in raised.value.hint


async def test_a_shard_of_a_stopped_cluster_says_an_operator_stopped_it(named: dict[str, Any]) -> None:
    actors = NamedActors(["session-shard-0"], EngineConfig(), [FakeActor(dead())])  # no controller either
    with pytest.raises(Unavailable) as raised:
        await actors.call(0, ["op"], "shard")
    error = raised.value
    assert error.details == {"shard": 0, "state": "stopped"}
    assert "session-engine stop" in error.hint and "session-engine serve" in error.hint
    assert "restarting or moving" not in error.hint
    assert error.retry_after_s == 10.0


async def test_why_an_actor_is_missing_is_asked_once_a_second(named: dict[str, Any]) -> None:
    controller = FakeActor(described={"moving": ["session-shard-0"]})
    named[CONTROLLER_NAME] = controller
    actors = NamedActors(["session-shard-0"], EngineConfig(), [FakeActor(dead())])
    for _ in range(5):
        with pytest.raises(Unavailable):
            await actors.call(0, ["op"], "shard")
    assert len(controller.calls) == 1

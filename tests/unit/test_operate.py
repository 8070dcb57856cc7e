"""What makes `session-engine status` exit 3, from what the actors said of themselves."""

from __future__ import annotations

from typing import Any

from engine.runtime.operators import said_unstarted
from session_engine.operate import actor_state, unhealthy


def actor(
    name: str, described: dict[str, Any] | None, ray_state: str = "ALIVE", role: str = ""
) -> dict[str, Any]:
    return {"name": name, "role": role, "ray_state": ray_state, "described": described}


def test_model_actors_at_work_or_idle_keep_status_healthy() -> None:
    found = {
        "actors": [
            actor("session-shard-0", {"state": "serving"}),
            actor("summarizer-0", {"state": "busy", "generating": 4, "busy_s": 40.0}),
            actor("summarizer-pool", {"state": "busy", "generating": 4, "waiting": 12}),
            actor("embedder-0", {"state": "idle", "waiting_texts": {"urgent": 0, "background": 0}}),
            actor("embedder-1", {"state": "loading"}),  # a start: sessions are served meanwhile
            actor("controller", {"cluster_id": "c"}),
        ]
    }
    assert unhealthy(found) == []


def test_a_model_that_failed_to_load_makes_status_fail() -> None:
    found = {"actors": [actor("embedder-0", {"state": "failed", "error": "no such file"})]}
    assert unhealthy(found) == ["embedder-0"]


def test_actors_that_do_not_answer_or_shards_that_do_not_serve_make_status_fail() -> None:
    found = {
        "actors": [
            actor("summarizer-0", {"error": "GetTimeoutError"}),
            actor("embedder-0", {"error": "ActorUnavailableError"}),
            actor("session-shard-0", {"state": "draining"}),
            actor("session-shard-1", None, ray_state="RESTARTING"),
            actor("session-shard-2", {"state": "serving"}),
        ]
    }
    assert unhealthy(found) == ["summarizer-0", "embedder-0", "session-shard-0", "session-shard-1"]
    assert [actor_state(a) for a in found["actors"][:3]] == ["no answer", "unreachable", "draining"]


def test_a_summarizer_that_ray_still_creates_is_loading_not_failing() -> None:
    """A summarizer loads its model in its constructor: Ray shows it PENDING_CREATION (and it is
    not asked to describe itself) until the load ends. That is a normal start; a shard that Ray
    has not created is not."""
    found = {
        "actors": [
            actor("session-shard-0", {"state": "serving"}, role="session shard"),
            actor("summarizer-pool", {"state": "loading", "workers": []}, role="summarizer pool"),
            actor("summarizer-0", None, ray_state="PENDING_CREATION", role="summarizer"),
            actor("memory-shard-0", None, ray_state="PENDING_CREATION", role="memory shard"),
            actor("summarizer-1", None, ray_state="DEAD", role="summarizer"),
        ]
    }
    assert unhealthy(found) == ["memory-shard-0", "summarizer-1"]
    assert actor_state(found["actors"][2]) == "loading"


def test_summarizers_never_created_under_a_paused_or_off_model_pass_are_healthy() -> None:
    for state in ("off", "paused"):
        pool = {"state": "idle", "workers": [], "waiting": 0, "model_pass": {"state": state}}
        found = {
            "actors": [
                actor("summarizer-pool", pool, role="summarizer pool"),
                actor("summarizer-0", None, ray_state="MISSING", role="summarizer"),
                actor("summarizer-1", None, ray_state="MISSING", role="summarizer"),
            ]
        }
        said_unstarted(found["actors"])
        assert unhealthy(found) == []
        assert [actor_state(a) for a in found["actors"][1:]] == [state, state]


def test_summarizers_missing_while_the_model_pass_is_active_make_status_fail() -> None:
    pool = {"state": "failed", "error": "no model", "workers": [], "model_pass": {"state": "active"}}
    found = {
        "actors": [
            actor("summarizer-pool", pool, role="summarizer pool"),
            actor("summarizer-0", None, ray_state="MISSING", role="summarizer"),
        ]
    }
    said_unstarted(found["actors"])
    assert unhealthy(found) == ["summarizer-pool", "summarizer-0"]

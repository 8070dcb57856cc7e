"""Quotas per organization: active sessions, messages per session, bytes per message and
per context, vectors per namespace; each a clear 4xx, each settable per organization."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from engine.config import LimitsConfig, load_config
from engine.errors import QuotaExceeded
from engine.keys import KeyStore
from engine.memory.index import IndexParams
from engine.memory.ops import UpsertVectors
from engine.memory.store import MemoryStore
from engine.sessions.ops import AppendMessages, CreateSession, EndSession
from engine.sessions.session import NewMessage, SessionStatus
from engine.sessions.store import SessionStore
from tests.support.local_shards import LocalMemoryTransport, LocalTransport

T0 = 1_700_000_000_000


def test_the_active_session_quota_counts_only_active_sessions() -> None:
    store = SessionStore()
    store.apply(CreateSession("acme", "s1", "a", 60, {}, max_active=2), T0)
    store.apply(CreateSession("acme", "s2", "a", 60, {}, max_active=2), T0)
    with pytest.raises(QuotaExceeded) as refused:
        store.apply(CreateSession("acme", "s3", "a", 60, {}, max_active=2), T0)
    assert refused.value.details == {"quota": "max_active_sessions", "limit": 2}
    store.apply(CreateSession("globex", "s3", "a", 60, {}, max_active=2), T0)  # another organization
    store.apply(EndSession("acme", "s1", SessionStatus.COMPLETED), T0)
    store.apply(CreateSession("acme", "s4", "a", 60, {}, max_active=2), T0)


def test_the_message_quota_refuses_a_whole_batch_that_would_pass_it() -> None:
    store = SessionStore()
    store.apply(CreateSession("acme", "s1", "a", 60, {}), T0)
    two = tuple(NewMessage("user", str(i)) for i in range(2))
    store.apply(AppendMessages("acme", "s1", two, max_messages=3), T0)
    with pytest.raises(QuotaExceeded):
        store.apply(AppendMessages("acme", "s1", two, max_messages=3), T0)
    assert len(store._sessions[("acme", "s1")].messages) == 2, "all or nothing"
    store.apply(AppendMessages("acme", "s1", two[:1], max_messages=3), T0)


def test_quotas_are_not_checked_on_replay_so_a_lowered_limit_never_loses_a_logged_write() -> None:
    store = SessionStore()
    store.replaying = True
    for i in range(3):
        store.apply(CreateSession("acme", f"s{i}", "a", 60, {}, max_active=1), T0)
    assert len(store) == 3


def test_the_vector_quota_counts_new_ids_only() -> None:
    store = MemoryStore(IndexParams())

    def upsert(*ids: str) -> Any:
        vectors = np.eye(3, dtype=np.float32)[: len(ids)]
        return store.apply(
            UpsertVectors("acme", "notes", ids, vectors, tuple({} for _ in ids), max_vectors=2)
        )

    upsert("a", "b")
    upsert("a", "b")  # replacing is not adding
    with pytest.raises(QuotaExceeded) as refused:
        upsert("c")
    assert refused.value.details["quota"] == "max_vectors_per_namespace"
    with pytest.raises(QuotaExceeded):
        store.apply(
            UpsertVectors(
                "acme", "new", ("a", "b", "c"), np.eye(3, dtype=np.float32), ({},) * 3, max_vectors=2
            )
        )
    assert len(store) == 2, "a refused first upsert leaves no empty namespace behind"


def test_per_organization_overrides_apply_over_the_defaults() -> None:
    limits = LimitsConfig.model_validate(
        {"max_active_sessions": 10, "orgs": {"big": {"max_active_sessions": 1000, "max_message_bytes": 10}}}
    )
    assert limits.for_org("small") is limits
    big = limits.for_org("big")
    assert (big.max_active_sessions, big.max_message_bytes, big.max_context_bytes) == (1000, 10, 64 * 1024)


def test_quotas_through_http_answer_409_and_413_for_one_organization_only() -> None:
    config = load_config()
    limits = LimitsConfig.model_validate(
        {
            "orgs": {
                "tight": {
                    "max_active_sessions": 2,
                    "max_messages_per_session": 2,
                    "max_message_bytes": 16,
                    "max_context_bytes": 16,
                    "max_vectors_per_namespace": 1,
                }
            }
        }
    )
    app = create_app(
        config.model_copy(update={"limits": limits, "shards": 1}),
        transport=lambda c: LocalTransport(c.shards),
        memory=lambda c: LocalMemoryTransport(
            c.memory.shards, IndexParams(), lambda t: np.ones((len(t), 8), np.float32)
        ),
        keys=KeyStore.from_spec("tight-key=tight,free-key=free"),
    )
    with TestClient(app) as client:
        for org in ("tight", "free"):
            auth = {"Authorization": f"Bearer {org}-key"}
            tight = org == "tight"
            codes = [client.post("/sessions", json={"name": "x"}, headers=auth).status_code for _ in range(3)]
            assert codes == ([201, 201, 409] if tight else [201, 201, 201])
            sid = client.get("/sessions", headers=auth).json()["sessions"][0]["id"]
            say = {"messages": [{"role": "user", "content": "hi"}] * 3}
            refused = client.post(f"/sessions/{sid}/messages", json=say, headers=auth)
            assert refused.status_code == (409 if tight else 201)
            if tight:
                assert refused.json()["details"] == {"quota": "max_messages_per_session", "limit": 2}
                assert refused.json()["hint"]
            long = {"role": "user", "content": "x" * 17}
            assert client.post(f"/sessions/{sid}/messages", json=long, headers=auth).status_code == (
                413 if tight else 201
            )
            context = client.put(f"/sessions/{sid}/context", json={"k": "x" * 20}, headers=auth)
            assert context.status_code == (413 if tight else 200)
            vectors = {"vectors": [{"id": "a", "text": "a"}, {"id": "b", "text": "b"}]}
            assert client.post("/vectors/upsert", json=vectors, headers=auth).status_code == (
                409 if tight else 200
            )


def test_a_create_refused_by_a_full_shard_tries_another_before_the_quota_refuses_it(monkeypatch: Any) -> None:
    from api.routes import sessions as routes
    from engine.routing import shard_for
    from engine.sessions.session import new_session_id

    def ids_on(shard: int, n: int) -> list[str]:
        found: list[str] = []
        while len(found) < n:
            sid = new_session_id()
            if shard_for("tight", sid, 2) == shard:
                found.append(sid)
        return found

    # Shard 0, shard 0 again (full: the second create moves on), shard 1; then both are full.
    (a, b, c), (d, e) = ids_on(0, 3), ids_on(1, 2)
    monkeypatch.setattr(routes, "new_session_id", iter([a, b, d, c, e]).__next__)
    limits = LimitsConfig.model_validate({"orgs": {"tight": {"max_active_sessions": 2}}})
    app = create_app(
        load_config().model_copy(update={"limits": limits, "shards": 2}),
        transport=lambda c: LocalTransport(c.shards),
        memory=lambda c: LocalMemoryTransport(c.memory.shards, IndexParams(), lambda t: np.ones((len(t), 8))),
        keys=KeyStore.from_spec("tight-key=tight"),
    )
    with TestClient(app) as client:
        auth = {"Authorization": "Bearer tight-key"}
        first = client.post("/sessions", json={"name": "x"}, headers=auth)
        second = client.post("/sessions", json={"name": "x"}, headers=auth)
        assert (first.json()["id"], second.json()["id"]) == (a, d), "the second went to shard 1"
        assert second.headers["location"] == f"/sessions/{d}"
        third = client.post("/sessions", json={"name": "x"}, headers=auth)
        assert third.status_code == 409 and third.json()["details"]["quota"] == "max_active_sessions"

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.ratelimit import RateLimiter
from engine.config import LimitsConfig, load_config
from engine.errors import RateLimited
from engine.keys import KeyStore
from engine.memory.index import IndexParams
from tests.support.local_shards import LocalMemoryTransport, LocalTransport


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admitted(limiter: RateLimiter, org: str, n: int) -> int:
    count = 0
    for _ in range(n):
        try:
            limiter.check(org)
            count += 1
        except RateLimited:
            pass
    return count


def test_a_bucket_holds_a_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(LimitsConfig(requests_per_second=10, burst_s=0.5), workers=1, clock=clock)
    assert admitted(limiter, "acme", 20) == 5, "half a second of a 10/s rate at once"
    with pytest.raises(RateLimited) as refused:
        limiter.check("acme")
    assert refused.value.limit_per_s == 10 and 0 < refused.value.retry_after_s <= 0.1
    clock.now += 0.25  # 2.5 requests' worth
    assert admitted(limiter, "acme", 20) == 2
    clock.now += 60
    assert admitted(limiter, "acme", 20) == 5, "a long quiet spell refills to the burst, no more"


def test_organizations_have_buckets_of_their_own_and_overrides_apply_by_name() -> None:
    clock = Clock()
    limits = LimitsConfig.model_validate(
        {"requests_per_second": 2, "orgs": {"big": {"requests_per_second": 50}}}
    )
    limiter = RateLimiter(limits, workers=1, clock=clock)
    assert admitted(limiter, "acme", 10) == 2
    assert admitted(limiter, "globex", 10) == 2, "acme's flood costs globex nothing"
    assert admitted(limiter, "big", 100) == 50


def test_each_worker_takes_its_share_so_all_together_never_pass_the_rate() -> None:
    clock = Clock()
    workers = [RateLimiter(LimitsConfig(requests_per_second=12), workers=3, clock=clock) for _ in range(3)]
    assert sum(admitted(w, "acme", 100) for w in workers) == 12
    clock.now += 1
    assert sum(admitted(w, "acme", 100) for w in workers) == 12


def test_no_rate_configured_limits_nothing() -> None:
    limiter = RateLimiter(
        LimitsConfig.model_validate({"orgs": {"acme": {"requests_per_second": 1}}}), workers=1, clock=Clock()
    )
    assert admitted(limiter, "globex", 1000) == 1000
    assert not RateLimiter(LimitsConfig(), workers=1).enabled


def test_an_organization_over_its_rate_gets_429_with_retry_headers_and_others_do_not() -> None:
    config = load_config()
    config = config.model_copy(
        update={"limits": config.limits.model_copy(update={"requests_per_second": 2.0, "burst_s": 1.0})}
    )
    app = create_app(
        config,
        transport=lambda c: LocalTransport(c.shards),
        memory=lambda c: LocalMemoryTransport(
            c.memory.shards, IndexParams(), lambda t: np.zeros((len(t), 8), np.float32)
        ),
        keys=KeyStore.from_spec("flood-key=flood,calm-key=calm"),
    )
    with TestClient(app) as client:
        flood = {"Authorization": "Bearer flood-key"}
        answers = [client.post("/sessions", json={"name": "x"}, headers=flood) for _ in range(3)]
        assert [a.status_code for a in answers] == [201, 201, 429]
        refused = answers[2]
        assert refused.json()["code"] == "RATE_LIMITED" and refused.json()["hint"]
        assert refused.json()["details"]["limit_per_s"] == 2
        assert refused.headers["Retry-After"] == "1" and refused.headers["X-RateLimit-Limit"] == "2"
        assert refused.headers["X-RateLimit-Remaining"] == "0" and "x-request-id" in refused.headers
        calm = {"Authorization": "Bearer calm-key"}
        assert client.post("/sessions", json={"name": "y"}, headers=calm).status_code == 201
        assert client.get("/healthz").status_code == 200, "health checks are never limited"

"""Requests per second per organization: a token bucket each, in each gateway worker.

A worker refills an organization's bucket at its rate divided by the number of workers, so the
organization never gets more than its rate in all; if its connections all land on one worker it
may get as little as rate / workers. Nothing is shared between workers, so a check costs no
round trip. A bucket holds `burst_s` seconds of its rate (at least one request).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from engine.config import LimitsConfig
from engine.errors import RateLimited


class RateLimiter:
    def __init__(
        self, limits: LimitsConfig, workers: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._default = limits.requests_per_second
        self._per_org = {org: limits.for_org(org).requests_per_second for org in limits.orgs}
        self._burst_s = limits.burst_s
        self._workers = max(1, workers)
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # org -> [tokens, when last refilled]

    @property
    def enabled(self) -> bool:
        return self._default is not None or any(rate is not None for rate in self._per_org.values())

    def check(self, org: str) -> None:
        """Take one request from the organization's bucket, or raise RateLimited."""
        rate = self._per_org.get(org, self._default)
        if rate is None:
            return
        share = rate / self._workers
        capacity = max(1.0, share * self._burst_s)
        now = self._clock()
        bucket = self._buckets.get(org)
        if bucket is None:
            bucket = self._buckets[org] = [capacity, now]
        tokens = min(capacity, bucket[0] + (now - bucket[1]) * share)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return
        bucket[0] = tokens
        raise RateLimited(rate, math.ceil((1.0 - tokens) / share * 1000) / 1000)

"""The export cursors a shard keeps open: bounded on the shard and per organization, touched by
each page, lapsing unused, and swept before a change is copied into them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.errors import Unavailable
from engine.storage.cursors import Cursors

BOUNDS = (3, 2)  # three open on the shard, two of them one organization's


@dataclass
class FakeCursor:
    org: str
    used_ms: int
    idle_ms: int = 1000


def opened(cursors: Cursors[FakeCursor], export_id: str, org: str, now_ms: int = 0) -> FakeCursor:
    return cursors.open(export_id, org, BOUNDS, now_ms, lambda: FakeCursor(org, now_ms))


def test_cursors_are_bounded_on_the_shard_and_per_organization() -> None:
    cursors: Cursors[FakeCursor] = Cursors("a test shard")
    opened(cursors, "a1", "acme")
    opened(cursors, "a2", "acme")
    with pytest.raises(Unavailable, match="this organization's"):
        opened(cursors, "a3", "acme")
    opened(cursors, "o1", "other")
    with pytest.raises(Unavailable, match="on a test shard"):
        opened(cursors, "o2", "other")
    cursors.close("a1", "other")  # another organization's id closes nothing
    assert len(cursors) == 3
    cursors.close("a1", "acme")
    opened(cursors, "o2", "other")


def test_a_page_touches_its_cursor_and_a_lapsed_one_is_gone() -> None:
    cursors: Cursors[FakeCursor] = Cursors("a test shard")
    kept = opened(cursors, "kept", "acme")
    opened(cursors, "lapsing", "acme")
    assert cursors.page("kept", "acme", 900) is kept
    assert len(cursors) == 2
    assert cursors.of_org("acme", 1500) == [kept]  # the lapsed one swept before a change is copied
    assert len(cursors) == 1
    with pytest.raises(Unavailable, match="gone"):
        cursors.page("lapsing", "acme", 1500)
    with pytest.raises(Unavailable, match="gone"):
        cursors.page("kept", "other", 1500)  # another organization's id
    assert cursors.of_org("acme", 3000) == [] and len(cursors) == 0

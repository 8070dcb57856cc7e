"""The export cursors a shard keeps open, by export id, whatever kind they page out (a session
shard's sessions, a memory shard's vectors): a few at once, some per organization, each lapsing
when unused past its idle time. What a cursor pages out, and what it copies before a change,
live beside its kind's store (engine.sessions.export, engine.memory.export).

A lapsed cursor costs nothing: `of_org`, which a store asks before every change, sweeps first, so
no change is copied into a cursor whose client went away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from engine.errors import Unavailable


class Cursor(Protocol):
    org: str
    used_ms: int  # the last time a page was taken
    idle_ms: int  # unused this long, the cursor has lapsed


C = TypeVar("C", bound=Cursor)


class Cursors(Generic[C]):
    """`shard`: the shard in a refusal's message ("a memory shard")."""

    def __init__(self, shard: str) -> None:
        self._shard = shard
        self._open: dict[str, C] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open(
        self, export_id: str, org: str, bounds: tuple[int, int], now_ms: int, make: Callable[[], C]
    ) -> C:
        """A new cursor (`make`), within `bounds`: (at most open on the shard, of them the
        organization's). Only a few are open at once, each costing a copy of what changes before it
        reaches it; and an organization holds only some, so one tenant's exports never keep every
        other tenant's out. Past either: Unavailable."""
        max_open, max_per_org = bounds
        self.sweep(now_ms)
        if len(self._open) >= max_open:
            raise Unavailable(
                f"{len(self._open)} exports are in progress on {self._shard}, the most it keeps open",
                {"limit": max_open},
                "Retry when an export in progress has finished.",
            )
        if sum(1 for cursor in self._open.values() if cursor.org == org) >= max_per_org:
            raise Unavailable(
                f"{max_per_org} of this organization's exports are in progress, the most it may have",
                {"limit": max_per_org},
                "Retry when one of this organization's exports has finished.",
            )
        cursor = self._open[export_id] = make()
        return cursor

    def page(self, export_id: str, org: str, now_ms: int) -> C:
        """The organization's cursor, touched (it does not lapse while pages are taken); Unavailable
        if it is gone."""
        self.sweep(now_ms)
        cursor = self._open.get(export_id)
        if cursor is None or cursor.org != org:
            raise Unavailable(
                "the export's cursor is gone (it lapsed, or its shard restarted)",
                {"export_id": export_id},
                "Start the export again.",
            )
        cursor.used_ms = now_ms
        return cursor

    def close(self, export_id: str, org: str) -> None:
        """Drop the organization's cursor (done, or its export ended); nothing if it is gone."""
        cursor = self._open.get(export_id)
        if cursor is not None and cursor.org == org:
            del self._open[export_id]

    def of_org(self, org: str, now_ms: int) -> list[C]:
        """The organization's live cursors, the lapsed swept first; none open costs one check."""
        if not self._open:
            return []
        self.sweep(now_ms)
        return [cursor for cursor in self._open.values() if cursor.org == org]

    def sweep(self, now_ms: int) -> None:
        """Drop the cursors unused past their idle time: an abandoned export (its client gone, its
        gateway stopped) pins the copies it keeps only until then."""
        for export_id, cursor in list(self._open.items()):
            if now_ms - cursor.used_ms > cursor.idle_ms:
                del self._open[export_id]

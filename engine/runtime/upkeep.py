"""What every durable shard actor (session or memory) runs beside its requests: the once-a-second
log sync for `fsync: everysec`, the snapshot timer, the once-a-second retry of a log that could not
be written (the shard is read-only meanwhile), and the stop when a shard cannot even rebuild itself."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol

from engine.errors import LogWriteFailed

log = logging.getLogger(__name__)

RESUME_INTERVAL_S = 1.0


class Durable(Protocol):
    @property
    def read_only(self) -> bool: ...

    def sync(self) -> None: ...

    def snapshot_due(self) -> bool: ...

    def resume_writes(self) -> bool: ...


def fail_stop(what: str, index: int) -> NoReturn:
    # The log failed and the shard could not rebuild itself from its files: memory may hold a change
    # the disk does not. Exit so Ray restarts the actor from its files.
    log.critical("cannot rebuild after a failed log write; exiting", extra={"shard": index, "what": what})
    os._exit(70)


async def sync_forever(durable: Durable, what: str, index: int) -> None:
    while True:
        await asyncio.sleep(1.0)
        try:
            durable.sync()  # a failed sync turns the shard read-only; it raises only if it cannot
        except LogWriteFailed:
            fail_stop(what, index)


async def resume_writes_forever(
    durable: Durable, on_resumed: Callable[[], None], what: str, index: int
) -> None:
    """While the shard is read-only, try its disk once a second; `on_resumed` once it takes writes."""
    while True:
        await asyncio.sleep(RESUME_INTERVAL_S)
        if durable.read_only and durable.resume_writes():
            log.warning("%s takes changes again", what, extra={"shard": index})
            on_resumed()


async def snapshot_forever(
    durable: Durable, snapshot: Callable[[], Awaitable[object]], what: str, index: int
) -> None:
    while True:
        await asyncio.sleep(1.0)
        if not durable.read_only and durable.snapshot_due():  # read-only: its disk refuses writes
            try:
                await snapshot()
            except LogWriteFailed:
                fail_stop(what, index)
            except OSError:
                log.exception(
                    "%s snapshot failed; the log still holds every change", what, extra={"shard": index}
                )

"""What every durable shard actor (session or memory) runs beside its requests: the once-a-second
log sync for `fsync: everysec`, the snapshot timer, and the stop when the log cannot be written."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol

from engine.storage.wal import LogWriteFailed

log = logging.getLogger(__name__)


class Durable(Protocol):
    def sync(self) -> None: ...

    def snapshot_due(self) -> bool: ...


def fail_stop(what: str, index: int) -> NoReturn:
    # Memory now holds a change the disk may not; exit so Ray restarts the actor from its files.
    log.critical("log write failed; exiting so the %s is rebuilt from disk", what, extra={"shard": index})
    os._exit(70)


async def sync_forever(durable: Durable, what: str, index: int) -> None:
    while True:
        await asyncio.sleep(1.0)
        try:
            durable.sync()
        except LogWriteFailed:
            fail_stop(what, index)


async def snapshot_forever(
    durable: Durable, snapshot: Callable[[], Awaitable[object]], what: str, index: int
) -> None:
    while True:
        await asyncio.sleep(1.0)
        if durable.snapshot_due():
            try:
                await snapshot()
            except OSError:
                log.exception(
                    "%s snapshot failed; the log still holds every change", what, extra={"shard": index}
                )

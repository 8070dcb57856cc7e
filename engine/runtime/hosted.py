"""What both kinds of shard actor (session, memory) do around their durable store: start only on
a directory that is really theirs, and keep trying while it is not; refuse changes while drained;
and say where they run and what they hold, for `session-engine status`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import ray

from engine.config import EngineConfig
from engine.errors import DirectoryLocked, Unavailable
from engine.storage.identity import NotThisShardsData, ShardIdentity
from engine.storage.logged import LoggedStore

from .ray_actors import CONTROLLER_NAME, RAY_ERRORS, lookup

log = logging.getLogger(__name__)

REFUSED_RETRY_S = 5.0  # how often a refused shard looks for its data again
# At its first start a shard waits this long for the directory lock (a restarted shard's dead
# predecessor may still be being reaped); a refused shard's retries do not wait, so they never
# hold up its event loop.
FIRST_LOCK_WAIT_S = 10.0


class HostedShard:
    """Base of the SessionShard and MemoryShard actors. A subclass sets KIND, and implements
    `_open_durable` (the store, from its directory and identity) and `_started` (its timers)."""

    KIND: str
    _durable: LoggedStore | None

    def _host(self, index: int, config: EngineConfig, cluster_id: str) -> None:
        self._index = index
        self._config = config
        self._identity = ShardIdentity(cluster_id, self.KIND, index)
        self._durable = None
        self._refusal: Unavailable | None = None
        self._timers: list[asyncio.Task[None]] = []
        if not self._try_start(FIRST_LOCK_WAIT_S):
            self._timers.append(asyncio.get_running_loop().create_task(self._start_when_found()))

    def _open_durable(self, identity: ShardIdentity, lock_wait_s: float) -> LoggedStore:
        raise NotImplementedError

    def _started(self) -> None:
        raise NotImplementedError

    def _try_start(self, lock_wait_s: float = 0.0) -> bool:
        try:
            self._durable = self._open_durable(self._identity, lock_wait_s)
        except NotThisShardsData as exc:
            self._refuse(exc)
            return False
        except DirectoryLocked as exc:
            # Another process (an old incarnation, or a shard of another cluster) holds it.
            self._refuse(Unavailable(str(exc), {"reason": str(exc), "refused": True}, "Retry shortly."))
            return False
        if self._refusal is not None:
            log.warning("shard found its data and serves", extra={"kind": self.KIND, "shard": self._index})
        self._refusal = None
        self._started()
        self._timers.append(asyncio.get_running_loop().create_task(self._drain_if_cluster_is()))
        return True

    async def _drain_if_cluster_is(self) -> None:
        """A shard that restarts (its node died, or Ray moved it) while the cluster is drained stays
        drained: the drain is the controller's state, not only the old incarnation's."""
        controller = lookup(CONTROLLER_NAME, self._config)
        try:
            drained = controller is not None and (await controller.describe.remote())["drained"]
        except RAY_ERRORS:
            return
        if drained:
            await self.drain(True)

    def _refuse(self, refusal: Unavailable) -> None:
        if self._refusal is None or self._refusal.message != refusal.message:
            log.error(
                "shard refuses to serve",
                extra={"kind": self.KIND, "shard": self._index, "reason": refusal.details.get("reason")},
            )
        self._refusal = refusal

    async def _start_when_found(self) -> None:
        while True:
            await asyncio.sleep(REFUSED_RETRY_S)
            if self._try_start():
                return

    def _refused(self, count: int) -> list[Any] | None:
        """The answers for a batch of `count` ops while the shard cannot serve at all, else None."""
        return None if self._durable is not None else [self._refusal] * count

    async def drain(self, on: bool = True, moving: bool = False) -> dict[str, Any]:
        """Stop taking changes (reads are still answered) and take a snapshot; `on=False` undoes it.
        `moving`: drained by `rebalance` before it moves the shard, which its refusals say."""
        if self._durable is None:
            return await self.describe()
        self._durable.drain(self._drained_refusal(moving) if on else None)
        if on and not self._durable.read_only:
            try:
                await self.snapshot()
            except OSError as exc:  # the log still holds every change; status shows the snapshot's age
                log.warning("drain snapshot failed", extra={"shard": self._index, "error": str(exc)})
        return await self.describe()

    def _drained_refusal(self, moving: bool) -> Unavailable:
        where = {"shard": self._index, "draining": True, "state": "moving" if moving else "draining"}
        if moving:
            return Unavailable(
                f"{self.KIND} shard {self._index} is moving to another node and takes no changes",
                where,
                "An operator is moving this shard (session-engine rebalance); it takes changes again in "
                "seconds and reads go on meanwhile. Retry shortly: this change was not applied.",
            )
        return Unavailable(
            f"{self.KIND} shard {self._index} is drained and takes no changes",
            where,
            "An operator drained the cluster (session-engine drain, or stop on its way to stopping it); "
            "reads go on. Changes are taken again after `session-engine drain --undo`, or once a "
            "stopped cluster is started again. This change was not applied.",
        )

    async def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    async def describe(self) -> dict[str, Any]:
        context = ray.get_runtime_context()
        where = {
            "kind": self.KIND,
            "index": self._index,
            "cluster_id": self._identity.cluster_id,
            "node_id": context.get_node_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        if self._durable is None:
            assert self._refusal is not None
            return {
                **where,
                "state": "refused",
                "reason": self._refusal.details.get("reason", str(self._refusal)),
            }
        return {**where, **self._durable.disk_status(), **self._counts()}

    def _counts(self) -> dict[str, Any]:
        raise NotImplementedError

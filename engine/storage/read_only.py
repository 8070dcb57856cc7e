"""What a durable shard (sessions or vector memory) does when its log cannot be written: rebuild
its state from its files up to the last acknowledged record, refuse changes as UNAVAILABLE while
answering reads, and take changes again once a probe write to the log succeeds."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.clock import Clock
from engine.errors import Unavailable

from .frames import CorruptFile
from .wal import LogWriteFailed, WriteAheadLog, encode_record, unwritable_log

log = logging.getLogger(__name__)


class ReadOnlyWhenLogFails:
    """Mixed into DurableShard and DurableMemory, which set these attributes and `_rebuild`."""

    READ_OPS: tuple[type, ...] = ()  # what a read-only shard still answers
    directory: Path
    lsn: int
    store: Any
    _wal: WriteAheadLog
    _clock: Clock
    _refusal: Unavailable | None  # set while the log cannot be written

    @property
    def read_only(self) -> bool:
        return self._refusal is not None

    def sync(self) -> None:
        """For fsync=everysec: called about once a second."""
        if self._refusal is not None:
            return
        try:
            self._wal.sync_pending()
        except LogWriteFailed as exc:
            self._go_read_only(exc)

    def resume_writes(self) -> bool:
        """While read-only: try the disk again with an empty log record (the segment reopened and
        cut back to its last whole record, the record written and synced); True once it took it."""
        if self._refusal is None:
            return True
        try:
            self._wal.reopen()
            self._wal.commit(encode_record(self.lsn + 1, self._clock.now_ms(), []), "always")
        except (OSError, LogWriteFailed):
            return False
        self.lsn += 1
        self._refusal = None
        log.warning("the log is writable again; taking changes", extra={"directory": str(self.directory)})
        return True

    def _answer_reads(self, ops: Sequence[Any], now_ms: int, refusal: Unavailable) -> list[Any]:
        """While read-only: every change refused, the reads among `ops` answered."""
        results: list[Any] = [refusal] * len(ops)
        reads = [i for i, op in enumerate(ops) if isinstance(op, self.READ_OPS)]
        if reads:
            answers = self.store.apply_batch([ops[i] for i in reads], now_ms)
            for i, answer in zip(reads, answers, strict=True):
                results[i] = answer
        return results

    def _go_read_only(self, failure: LogWriteFailed) -> Unavailable:
        """Rebuild the state from the files as they are up to the last acknowledged record, without
        changing them (the disk may refuse that too), and refuse changes from now on. Raises
        LogWriteFailed if the shard cannot rebuild itself."""
        log.error(
            "cannot write the log; rebuilding from disk and taking no changes until it can",
            extra={"directory": str(self.directory), "error": str(failure)},
        )
        self._refusal = unwritable_log(self.directory, failure)
        try:
            lsn = self._rebuild()
        except (OSError, CorruptFile) as exc:
            raise LogWriteFailed(
                f"cannot rebuild {self.directory} after a failed write: {exc}", str(exc)
            ) from exc
        if lsn != self.lsn:
            raise LogWriteFailed(
                f"{self.directory}: the log holds records up to {lsn} but {self.lsn} were written",
                "lost records",
            )
        return self._refusal

    def _rebuild(self) -> int:
        """Replace `store` with the state in the files up to record `lsn`; the last record read."""
        raise NotImplementedError

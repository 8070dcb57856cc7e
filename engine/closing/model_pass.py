"""The model's pass over extractive summaries, and whether it is worth running.

A closing job makes a session's summary ready with an extract (engine.closing.quality), no model
call on the way. The model's pass comes after, as an upgrade: the summarizer's text for the same
conversation, judged by `engine.closing.summary.judged`; kept, it replaces the extract, rejected,
the extract stays and the session says why. Every verdict of the cluster is made in one place,
the summarizer pool, by ModelPass: that is where Acceptance sees them all, and a judgement made
on each session shard would need every shard's verdicts gathered somewhere anyway.

Acceptance keeps the current model's last `acceptance_window` verdicts. `model_pass: auto` runs the
pass until a full window holds no kept summary, then pauses it: a small model that never writes a
usable summary of this data spends CPU for nothing kept. `on` always runs it, `off` never. The
window is saved per model in a small JSON file in the data directory, so a restart does not spend
another window of generations to learn the same thing, and a different model starts afresh.
Once `auto` has paused the pass, it stays paused until a restart: verdicts of generations that
were under way at the pause are not counted, since each session shard stops queueing upgrades at
the first skipped verdict it hears, and a pass that came back meanwhile would be active with
nothing sent to it.
Pure Python: no Ray, no model.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.models.summarizer import Conversation, Summary
from engine.storage.private import make_directory

from .summary import judged

log = logging.getLogger(__name__)

ACCEPTANCE_FILE = "summarizer-acceptance.json"
HOW_TO_RESUME = (
    "set models.summarizer.model_pass: on to run it regardless, or give models.summarizer.path a larger "
    "local model (a different model starts a fresh window); docs/memory.md, Summaries"
)


@dataclass(slots=True, frozen=True)
class Verdict:
    """What the model's pass made of one conversation.

    `outcome`: kept (its `text` replaces the extract), rejected (`reason` says why, from
    engine.closing.quality), or skipped (the pass is paused or off: no model call was made)."""

    outcome: str
    model: str = ""
    text: str | None = None
    reason: str | None = None
    messages_covered: int = 0
    messages_total: int = 0


SKIPPED = Verdict("skipped")


class Acceptance:
    """The current model's recent verdicts, and whether the model's pass runs."""

    def __init__(self, mode: str, window: int, model: str, file: Path | None = None) -> None:
        """`model`: what tells this model from another (its path); `file`: where windows are kept
        (None: not kept, for tests)."""
        self.mode = mode
        self.window = window
        self.model = model
        self._file = file
        self._verdicts: collections.deque[bool] = collections.deque(maxlen=window)
        self._saved: dict[str, Any] = {}
        if file is not None:
            self._saved = _read(file)
            kept = self._saved.get(model, {}).get("verdicts", [])
            self._verdicts.extend(bool(v) for v in kept[-window:])

    @property
    def active(self) -> bool:
        if self.mode == "off":
            return False
        return self.mode == "on" or not self._spent

    @property
    def _spent(self) -> bool:
        """A full window with no summary kept."""
        return len(self._verdicts) == self.window and not any(self._verdicts)

    def record(self, kept: bool) -> None:
        if self.mode == "auto" and self._spent:
            return  # paused until a restart (module docstring)
        self._verdicts.append(kept)

    def save(self) -> None:
        """Write the window (blocking I/O: call it off the event loop)."""
        self.write(self.encoded())

    def encoded(self) -> bytes:
        """Every model's window as the file holds it, this one's as it is now (taken on the event
        loop, where verdicts are recorded, so no verdict changes it half-way)."""
        self._saved[self.model] = {"verdicts": [int(v) for v in self._verdicts]}
        return orjson.dumps(self._saved)

    def write(self, data: bytes) -> None:
        """`data` into the file (blocking I/O). Written whole to a temporary file of its own, fsynced
        and renamed, so a crash leaves the old window or the new one, never half of one."""
        if self._file is None:
            return
        make_directory(self._file.parent)  # 0700 whatever the umask, as every data directory
        fd, part = tempfile.mkstemp(dir=self._file.parent, prefix=f"{self._file.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            Path(part).replace(self._file)
        except BaseException:
            Path(part).unlink(missing_ok=True)
            raise

    def describe(self) -> dict[str, Any]:
        judged_n, kept_n = len(self._verdicts), sum(self._verdicts)
        found: dict[str, Any] = {
            "mode": self.mode,
            "state": "active" if self.active else ("off" if self.mode == "off" else "paused"),
            "model": self.model,
            "window": self.window,
            "judged": judged_n,
            "kept": kept_n,
            "acceptance": round(kept_n / judged_n, 3) if judged_n else None,
        }
        if self.mode == "off":
            found["why"] = "models.summarizer.model_pass is off"
        elif not self.active:
            found["why"] = (
                f"none of the model's last {self.window} summaries was kept: an extract was better each time"
            )
            found["resume"] = HOW_TO_RESUME
        return found


def _read(file: Path) -> dict[str, Any]:
    try:
        found = orjson.loads(file.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        # A damaged window costs only a window of generations to find again.
        log.warning("the summarizer's acceptance window is unreadable", extra={"error": str(exc)})
        return {}
    return found if isinstance(found, dict) else {}


Generate = Callable[[Conversation], Awaitable[Summary | None]]


class ModelPass:
    """The model's text for a conversation, judged, with the verdict counted in `acceptance`.

    `generate` answers None for a conversation it dropped unmade (the pass paused while it waited)."""

    def __init__(
        self,
        acceptance: Acceptance,
        generate: Generate,
        judged_by: Callable[[Verdict], None] = lambda verdict: None,
    ) -> None:
        self.acceptance = acceptance
        self._generate = generate
        self._judged_by = judged_by  # told each verdict that was made (metrics)
        # One save at a time: upgrades are judged many at once, and each would write the file.
        self._saving = asyncio.Lock()

    async def upgrade(self, conversation: Conversation) -> Verdict:
        if not self.acceptance.active:
            return SKIPPED
        summary = await self._generate(conversation)
        if summary is None:
            return SKIPPED
        kept = await asyncio.to_thread(judged, summary.text, conversation)
        if kept.method == "model":
            verdict = Verdict(
                "kept", summary.model, kept.text, None, summary.messages_covered, summary.messages_total
            )
        else:
            verdict = Verdict(
                "rejected", summary.model, None, kept.reason, summary.messages_covered, summary.messages_total
            )
        was_active = self.acceptance.active
        self.acceptance.record(verdict.outcome == "kept")
        try:
            async with self._saving:
                data = self.acceptance.encoded()  # the window as it is once this save's turn comes
                await asyncio.to_thread(self.acceptance.write, data)
        except OSError as exc:
            # Not kept, the window is only learnt again after a restart; the verdict stands.
            log.warning("the summarizer's acceptance window was not saved", extra={"error": str(exc)})
        if was_active and not self.acceptance.active:
            log.warning(
                "the summarizer's pass is paused",
                extra={"model": self.acceptance.model, "why": self.acceptance.describe().get("why")},
            )
        self._judged_by(verdict)
        return verdict

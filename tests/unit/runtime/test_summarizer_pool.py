"""The summarizer pool without Ray (its actor class's own methods): a summarizer that fails to
load fails every upgrade queued for it and every later one, so closing jobs back off and leave
the upgrades queued in their sessions instead of waiting on it for ever."""

from __future__ import annotations

import asyncio
import inspect
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.config import load_config
from engine.errors import SummaryFailed
from engine.models.summarizer import Conversation
from engine.runtime import model_actors

Pool: Any = model_actors.SummarizerPool.__ray_metadata__.modified_class  # the class Ray wraps


async def test_a_summarizer_that_fails_to_load_fails_queued_and_later_upgrades(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loading = threading.Event()

    def no_model(path: Any, data_dir: Any) -> Any:
        loading.wait(5)  # (in the pool's loading thread)
        raise OSError("no model there")

    # Into the globals the pool's loading method runs with, not only the module as this file
    # imported it: in a whole run (Ray up in this process, hundreds of tests before) the module's
    # attribute was patched while the method still found the real function, which converted the
    # default model for seconds and outran the wait below.
    monkeypatch.setattr(model_actors, "summarizer_directory", no_model)
    monkeypatch.setitem(inspect.unwrap(Pool._start_workers).__globals__, "summarizer_directory", no_model)
    config = load_config(data_dir=tmp_path)
    pool = Pool(config)
    conversation = Conversation("trip", ((1, "user", "We went to Lisbon."),), 1)
    queued = asyncio.ensure_future(pool.upgrade(conversation))
    await asyncio.sleep(0.05)
    assert not queued.done() and pool._queue.qsize() == 1, "waits while the summarizer loads"
    loading.set()
    with pytest.raises(SummaryFailed, match="failed to load: OSError: no model there"):
        await asyncio.wait_for(queued, 5)
    with pytest.raises(SummaryFailed, match="failed to load"):
        await asyncio.wait_for(pool.upgrade(conversation), 5)
    assert (await pool.describe())["state"] == "failed"

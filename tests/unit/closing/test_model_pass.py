"""The model's pass (engine.closing.model_pass): its verdicts, and the acceptance window that pauses
it, kept per model in a file so a restart remembers; with a fake generate in place of the model."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from engine.closing.model_pass import ACCEPTANCE_FILE, Acceptance, ModelPass, Verdict
from engine.config import SummarizerConfig
from engine.models.summarizer import Conversation, Summary

SAID = (
    (0, "user", "Maya adopted a beagle named Biscuit in Lisbon last spring."),
    (1, "assistant", "Biscuit sounds lovely; Lisbon has good parks for a beagle."),
)
CONVERSATION = Conversation("dog", SAID, 2)
GOOD = "Maya has a beagle, Biscuit, from Lisbon; they discussed parks for him."
DIALOGUE = "user: hello there\nassistant: hi again"


class FakeModel:
    def __init__(self, text: str) -> None:
        self.text = text
        self.calls = 0

    async def __call__(self, conversation: Conversation) -> Summary | None:
        self.calls += 1
        return Summary(self.text, "tiny", len(conversation.messages), conversation.total, 10, 3)


def window(tmp_path: Path, mode: str = "auto", size: int = 3, model: str = "tiny") -> Acceptance:
    return Acceptance(mode, size, model, tmp_path / ACCEPTANCE_FILE)


async def test_a_usable_text_is_kept_and_a_degenerate_one_rejected_with_its_reason(tmp_path: Path) -> None:
    verdicts: list[Verdict] = []
    kept = await ModelPass(window(tmp_path), FakeModel(GOOD), verdicts.append).upgrade(CONVERSATION)
    assert kept == Verdict("kept", "tiny", GOOD, None, 2, 2)
    rejected = await ModelPass(window(tmp_path), FakeModel(DIALOGUE)).upgrade(CONVERSATION)
    assert (rejected.outcome, rejected.reason, rejected.text) == ("rejected", "dialogue", None)
    assert verdicts == [kept]


async def test_auto_pauses_after_a_full_window_with_nothing_kept(tmp_path: Path) -> None:
    model = FakeModel(DIALOGUE)
    model_pass = ModelPass(window(tmp_path, size=3), model)
    outcomes = [(await model_pass.upgrade(CONVERSATION)).outcome for _ in range(5)]
    assert outcomes == ["rejected", "rejected", "rejected", "skipped", "skipped"]
    assert model.calls == 3, "paused: no model call"
    found = model_pass.acceptance.describe()
    assert (found["state"], found["judged"], found["kept"], found["acceptance"]) == ("paused", 3, 0, 0.0)
    assert "model_pass: on" in found["resume"]


async def test_one_kept_summary_in_the_window_keeps_the_pass_running(tmp_path: Path) -> None:
    model = FakeModel(GOOD)
    model_pass = ModelPass(window(tmp_path, size=3), model)
    await model_pass.upgrade(CONVERSATION)
    model.text = DIALOGUE
    for _ in range(2):
        await model_pass.upgrade(CONVERSATION)
    assert model_pass.acceptance.active
    assert (await model_pass.upgrade(CONVERSATION)).outcome == "rejected"  # the kept one leaves the window
    assert not model_pass.acceptance.active


async def test_on_runs_whatever_the_window_and_off_never_calls_the_model(tmp_path: Path) -> None:
    model = FakeModel(DIALOGUE)
    always = ModelPass(window(tmp_path, mode="on", size=2), model)
    outcomes = [(await always.upgrade(CONVERSATION)).outcome for _ in range(4)]
    assert outcomes == ["rejected"] * 4 and always.acceptance.describe()["state"] == "active"
    never = ModelPass(window(tmp_path, mode="off"), model)
    assert (await never.upgrade(CONVERSATION)).outcome == "skipped" and model.calls == 4
    assert never.acceptance.describe()["state"] == "off"


async def test_a_restart_remembers_the_window_of_its_model_and_a_new_model_starts_afresh(
    tmp_path: Path,
) -> None:
    model_pass = ModelPass(window(tmp_path, size=2), FakeModel(DIALOGUE))
    for _ in range(2):
        await model_pass.upgrade(CONVERSATION)
    assert not window(tmp_path, size=2).active, "the same model after a restart: still paused"
    other = window(tmp_path, size=2, model="/models/larger")
    assert other.active and other.describe()["judged"] == 0
    other.record(True)
    other.save()
    assert not window(tmp_path, size=2).active, "each model keeps its own window"
    assert window(tmp_path, mode="on", size=2).active


def test_a_damaged_window_file_starts_a_fresh_window(tmp_path: Path) -> None:
    (tmp_path / ACCEPTANCE_FILE).write_text("{not json")
    acceptance = window(tmp_path)
    assert acceptance.active and acceptance.describe()["judged"] == 0


async def test_a_conversation_dropped_unmade_is_skipped(tmp_path: Path) -> None:
    async def dropped(conversation: Conversation) -> Summary | None:
        return None  # the pool paused while it waited

    assert (await ModelPass(window(tmp_path), dropped).upgrade(CONVERSATION)).outcome == "skipped"
    assert window(tmp_path).describe()["judged"] == 0, "nothing judged, nothing counted"


@pytest.mark.parametrize(("switch", "mode"), [(True, "on"), (False, "off"), ("auto", "auto")])
def test_yaml_on_and_off_mean_the_words(switch: object, mode: str) -> None:
    assert SummarizerConfig.model_validate({"model_pass": switch}).model_pass == mode


async def test_a_window_that_cannot_be_saved_still_gives_the_verdict(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    acceptance = Acceptance("auto", 3, "tiny", blocked / ACCEPTANCE_FILE)  # under a file: never written
    verdict = await ModelPass(acceptance, FakeModel(GOOD)).upgrade(CONVERSATION)
    assert verdict.outcome == "kept" and acceptance.describe()["kept"] == 1


async def test_once_auto_pauses_late_verdicts_do_not_bring_the_pass_back(tmp_path: Path) -> None:
    """Each session shard stops queueing upgrades at its first skipped verdict: a pass that came
    back with the verdicts of generations under way at the pause would be active with nothing sent."""
    acceptance = window(tmp_path, size=2)
    for _ in range(2):
        acceptance.record(False)
    assert not acceptance.active
    acceptance.record(True)  # a generation that was under way at the pause
    assert not acceptance.active and acceptance.describe()["kept"] == 0
    on = window(tmp_path, mode="on", size=2)
    for kept in (False, False, True):
        on.record(kept)
    assert on.describe()["kept"] == 1, "on counts every verdict"


async def test_verdicts_judged_at_once_are_saved_one_at_a_time_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acceptance = window(tmp_path, size=50)
    writing = 0
    most = 0
    write = acceptance.write

    def counted(data: bytes) -> None:
        nonlocal writing, most
        writing += 1
        most = max(most, writing)
        time.sleep(0.005)
        write(data)
        writing -= 1

    monkeypatch.setattr(acceptance, "write", counted)
    model_pass = ModelPass(acceptance, FakeModel(GOOD))
    verdicts = await asyncio.gather(*(model_pass.upgrade(CONVERSATION) for _ in range(16)))
    assert [v.outcome for v in verdicts] == ["kept"] * 16
    assert most == 1, "one writer at a time"
    assert window(tmp_path, size=50).describe()["judged"] == 16
    assert [p.name for p in tmp_path.iterdir()] == [ACCEPTANCE_FILE], "no temporary file left"


def test_the_window_file_goes_into_a_private_directory_whatever_the_umask(tmp_path: Path) -> None:
    """The first writer of <data_dir>/models may be the window, before any model is converted."""
    previous = os.umask(0o002)
    try:
        acceptance = Acceptance("auto", 3, "tiny", tmp_path / "models" / ACCEPTANCE_FILE)
        acceptance.record(True)
        acceptance.save()
    finally:
        os.umask(previous)
    assert (tmp_path / "models").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "models" / ACCEPTANCE_FILE).stat().st_mode & 0o777 == 0o600

"""The real transformers loading, tokenizing, cutting and batched generation, on tiny models the
suite builds itself (tests/support/tiny_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.closing.quality import degeneracy, extractive
from engine.closing.summary import judged
from engine.config import SummarizerConfig
from engine.errors import ModelMissing
from engine.models.files import check_models, embedder_directory, summarizer_directory
from engine.models.summarizer import Conversation, Summarizer, Summary

REASONS = {"empty", "boilerplate", "dialogue", "repetition", "echo", "ungrounded"}


def conversation(n: int, *, name: str = "chat", size: int = 20) -> Conversation:
    messages = tuple((i, "user" if i % 2 == 0 else "assistant", f"m{i:03d} " + "x" * size) for i in range(n))
    return Conversation(name, messages, n)


def summarizer(path: Path, tmp_path: Path, **settings: object) -> Summarizer:
    config = SummarizerConfig.model_validate({"path": path, "max_new_tokens": 8, **settings})
    return Summarizer(config, tmp_path)


@pytest.mark.parametrize("model", ["tiny_t5", "tiny_causal"])
def test_a_batch_gets_one_summary_per_conversation_with_provenance(
    model: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    path: Path = request.getfixturevalue(model)
    s = summarizer(path, tmp_path, min_new_tokens=4)
    assert s.seq2seq is (model == "tiny_t5")
    conversations = [conversation(1), conversation(5, name="longer"), conversation(3, size=60)]
    results = s.summarize(conversations)
    assert len(results) == 3
    for result, c in zip(results, conversations, strict=True):
        assert isinstance(result, Summary), result
        assert result.text and result.model == path.name
        assert (result.messages_covered, result.messages_total) == (c.total, c.total)
        assert 4 <= result.output_tokens <= 8 + 1  # a seq2seq row starts with its decoder start token
        assert result.input_tokens <= s.budget


@pytest.mark.parametrize("model", ["tiny_t5", "tiny_causal"])
def test_the_model_text_comes_back_as_written_and_a_degenerate_one_is_replaced_when_judged(
    model: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    s = summarizer(request.getfixturevalue(model), tmp_path, min_new_tokens=4)
    words = "Maya adopted a beagle named Biscuit on Saturday in Lisbon and paid 300 euros for him."
    c = Conversation("pets", ((0, "user", words), (1, "assistant", "What a lovely thing to do today.")), 2)
    [raw] = s.summarize([c])
    if model == "tiny_causal":
        assert raw.text.startswith(SummarizerConfig().reply_prefix), "the reply starts where it was begun"
    said = [content for _, _, content in c.messages]
    kept = judged(raw.text, c)  # what a closing job keeps of it (engine.closing.summary)
    if kept.method == "model":  # random weights rarely write something grounded, but may
        assert kept.reason is None and kept.text == raw.text and degeneracy(raw.text, said) is None
    else:
        assert kept.method == "extractive" and kept.reason in REASONS and kept.text == extractive(said)
        assert degeneracy(raw.text, said) == kept.reason


@pytest.mark.parametrize("model", ["tiny_t5", "tiny_causal"])
def test_batched_and_one_at_a_time_generation_agree(
    model: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Padding must not change a conversation's summary (left padding for causal models)."""
    s = summarizer(request.getfixturevalue(model), tmp_path, min_new_tokens=4)
    conversations = [conversation(1), conversation(6, size=50)]
    batched = [r.text for r in s.summarize(conversations)]
    alone = [r.text for c in conversations for r in s.summarize([c])]
    assert batched == alone and len(alone) == 2


def test_a_long_conversation_keeps_its_opening_and_most_recent_messages(
    tmp_path: Path, tiny_t5: Path
) -> None:
    s = summarizer(tiny_t5, tmp_path, max_input_tokens=300, keep_first_messages=2)
    long = conversation(60, size=20)  # ~25 byte tokens a message: far over 300
    transcript, covered = s.cut(long)
    lines = transcript.splitlines()
    assert lines[0].startswith("user: m000") and lines[1].startswith("assistant: m001")
    assert lines[2].startswith("[... ") and lines[2].endswith(" messages omitted ...]")
    assert lines[-1].startswith("assistant: m059")
    omitted = int(lines[2].split()[1])
    assert covered == len(lines) - 1 and covered + omitted == 60
    assert [int(line.split()[1][1:]) for line in lines[3:]] == list(range(60 - (covered - 2), 60))
    prompt_tokens = len(s._tokenizer(f"summarize: {transcript}")["input_ids"])
    assert s.budget - 80 <= prompt_tokens <= s.budget, "the budget is used, and never overrun"
    [result] = s.summarize([long])
    assert isinstance(result, Summary) and (result.messages_covered, result.messages_total) == (covered, 60)


def test_one_huge_message_is_cut_to_half_the_budget(tmp_path: Path, tiny_t5: Path) -> None:
    s = summarizer(tiny_t5, tmp_path, max_input_tokens=200)
    transcript, covered = s.cut(Conversation("big", ((0, "user", "y" * 5000), (1, "assistant", "ok")), 2))
    first, second = transcript.splitlines()
    assert covered == 2 and first.endswith("…") and len(first.encode()) < 110
    assert second == "assistant: ok"


def test_the_budget_is_the_smallest_of_setting_and_window(
    tmp_path: Path, tiny_t5: Path, tiny_causal: Path
) -> None:
    assert summarizer(tiny_t5, tmp_path, max_input_tokens=4096).budget == 512  # n_positions
    assert summarizer(tiny_t5, tmp_path, max_input_tokens=100).budget == 100
    # a causal model's output shares its window
    assert summarizer(tiny_causal, tmp_path, max_input_tokens=4096, max_new_tokens=12).budget == 500


def test_a_missing_model_fails_at_start_naming_its_setting(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing) as caught:
        summarizer_directory(tmp_path / "nowhere", tmp_path)
    assert caught.value.details["setting"] == "models.summarizer.path"
    assert "models.summarizer.path" in str(caught.value)
    with pytest.raises(ModelMissing, match=r"models\.embedder\.path"):
        check_models(tmp_path, None)


def test_the_default_embedder_ships_in_its_package() -> None:
    directory, name = embedder_directory(None)
    assert name == "all-MiniLM-L6-v2" and (directory / "config.json").is_file()

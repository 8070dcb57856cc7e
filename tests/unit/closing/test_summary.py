"""What a closing job gives the model (the character pre-cut) and what it keeps of the model's text."""

from __future__ import annotations

from engine.closing.quality import extractive
from engine.closing.summary import Kept, conversation_of, judged, precut
from engine.config import SummarizerConfig
from engine.models.summarizer import Conversation
from engine.sessions.ops import SummaryInput
from engine.sessions.session import Message

BEAGLE = "Maya adopted a beagle named Biscuit on Saturday in Lisbon and paid 300 euros for him."


def test_precut_bounds_characters_with_the_same_shape_of_rule() -> None:
    messages = [("user", f"{i}:" + "z" * 1000) for i in range(100)]
    kept = precut(messages, keep_first=2, max_input_tokens=100)  # 1200 chars in all, 600 a message
    positions = [position for position, _, _ in kept]
    assert positions[:2] == [0, 99]  # the second opener no longer fit in half
    assert all(len(content) <= 600 for _, _, content in kept)
    assert sum(len(content) for _, _, content in kept) <= 1200
    assert positions == sorted(positions)


def test_the_conversation_is_the_precut_session_with_its_total() -> None:
    messages = [Message("user", f"{i} " + "w" * 200, 0) for i in range(200)]
    job = SummaryInput("long", messages, 0, 1, indexed=False)
    conversation = conversation_of(job, SummarizerConfig(max_input_tokens=64, keep_first_messages=1))
    assert (conversation.name, conversation.total) == ("long", 200)
    assert conversation.messages == precut(messages, keep_first=1, max_input_tokens=64)


def test_a_usable_text_is_kept_as_the_models() -> None:
    conversation = Conversation("pets", ((0, "user", BEAGLE),), 1)
    text = "Maya adopted Biscuit, a beagle, in Lisbon."
    assert judged(text, conversation) == Kept(text, "model", None)


def test_a_degenerate_text_is_replaced_by_the_extract_with_its_reason() -> None:
    conversation = Conversation("pets", ((0, "user", BEAGLE), (1, "assistant", "What a lovely dog.")), 2)
    kept = judged("user: hi\nassistant: hello", conversation)
    assert kept == Kept(extractive([BEAGLE, "What a lovely dog."]), "extractive", "dialogue")
    assert judged("", conversation).reason == "empty"

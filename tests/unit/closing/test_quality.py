"""The degenerate-summary detector and the extractive fallback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.closing.quality import EXTRACTIVE_WORDS, degeneracy, extractive

SAID = [
    "Hi, it's Maya again.",
    "By the way, our new beagle Biscuit came home on Saturday and already chewed a slipper.",
    "How long should I rest a steak after cooking it on the grill?",
    "About five to ten minutes, loosely covered, so the juices settle.",
    "I booked flights to Patagonia for the second week of November, can't wait.",
]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Sure", "empty"),
        ("A two-sentence summary of the conversation follows.", "boilerplate"),
        ("Here is a summary: they talked.", "boilerplate"),
        ("user: how long do I rest a steak?\nassistant: ten minutes", "dialogue"),
        ("Maya: I got a beagle.\nAssistant Bot: Lovely news.", "dialogue"),
        ("The user asked about steak. The user asked about steak. The user asked about steak.", "repetition"),
        ("By the way, our new beagle Biscuit came home on Saturday and already chewed a slipper.", "echo"),
        (
            "In this conversation, the user discusses quantum chromodynamics, tax havens and moons.",
            "ungrounded",
        ),
        (
            "In this conversation, the user asked how long to rest a steak and said that a beagle named "
            "Biscuit came home on Saturday; Maya is also flying to Patagonia in November.",
            None,
        ),
    ],
)
def test_degeneracy(text: str, reason: str | None) -> None:
    assert degeneracy(text, SAID) == reason


def test_without_the_conversation_only_the_text_itself_is_judged() -> None:
    assert degeneracy("They discussed quantum chromodynamics at length.") is None


def test_extractive_keeps_the_concrete_sentences_in_order() -> None:
    summary = extractive(SAID, max_words=30)
    assert "Biscuit" in summary and "Patagonia" in summary and "November" in summary
    assert summary.index("Biscuit") < summary.index("Patagonia"), "in the order they were said"
    assert "Hi, it's Maya again." not in summary, "too short to stand for the session"
    assert degeneracy(summary, SAID) in (None, "echo"), "extracts quote, by design"


def test_extractive_of_nothing_useful_is_still_text() -> None:
    assert extractive(["ok", "thanks"]) == "ok thanks"
    assert extractive([]) == ""


@given(st.lists(st.text(min_size=0, max_size=300), max_size=30))
def test_extractive_is_bounded(messages: list[str]) -> None:
    assert len(extractive(messages).split()) <= EXTRACTIVE_WORDS

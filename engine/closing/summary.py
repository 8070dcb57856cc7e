"""What a closing job gives the model, and what it keeps of the model's answer.

Before: the session's messages cut on the shard by characters (`precut`), so a huge session never
travels whole; the summarizer then cuts by tokens with the same shape of rule (engine.models.summarizer
states it). The closing job's first summary is the conversation's extract (`extract_of`); the
model's text, made later as an upgrade (engine.closing.model_pass), is checked (`judged`,
engine.closing.quality) and kept only when it is a usable summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.config import SummarizerConfig
from engine.models.summarizer import Conversation
from engine.sessions.ops import SummaryInput

from .quality import degeneracy, extractive

_CHARS_PER_TOKEN_BOUND = 12  # the character pre-cut passes on at least this many chars a token


@dataclass(slots=True, frozen=True)
class Kept:
    """The summary text a session keeps, and how it was made."""

    text: str
    method: str  # "model", or "extractive" when the model's text was degenerate
    reason: str | None  # why the model's text was set aside (engine.closing.quality)


def extract_of(conversation: Conversation) -> str:
    """The extractive summary of a (cut) conversation: its most salient sentences."""
    return extractive([content for _, _, content in conversation.messages])


def conversation_of(job: SummaryInput, config: SummarizerConfig) -> Conversation:
    messages = job.messages
    kept = precut(messages, keep_first=config.keep_first_messages, max_input_tokens=config.max_input_tokens)
    return Conversation(job.name, kept, len(messages))


def judged(text: str, conversation: Conversation) -> Kept:
    """The model's text if it is a usable summary of `conversation`, else its extract with the reason."""
    said = [content for _, _, content in conversation.messages]
    reason = degeneracy(text, said)
    if reason is None:
        return Kept(text, "model", None)
    return Kept(extractive(said), "extractive", reason)


def precut(
    messages: Sequence[Sequence[str | Any]], *, keep_first: int, max_input_tokens: int
) -> tuple[tuple[int, str, str], ...]:
    """A character-level first pass of the cut rule, cheap enough to run on the session's shard so a
    huge session never travels whole: the same shape of rule with a generous character budget that
    the token-level cut then tightens."""
    budget = max_input_tokens * _CHARS_PER_TOKEN_BOUND
    per_message = budget // 2

    def clip(i: int) -> tuple[int, str, str]:
        role, content = messages[i][0], messages[i][1]  # (role, content, ...) tuples such as Message
        return (i, role, content[:per_message])

    head: list[tuple[int, str, str]] = []
    used = 0
    for i in range(min(keep_first, len(messages))):
        item = clip(i)
        if used + len(item[2]) > budget // 2:
            break
        head.append(item)
        used += len(item[2])
    tail: list[tuple[int, str, str]] = []
    for i in range(len(messages) - 1, len(head) - 1, -1):
        item = clip(i)
        if used + len(item[2]) > budget:
            break
        tail.append(item)
        used += len(item[2])
    return tuple(head + tail[::-1])

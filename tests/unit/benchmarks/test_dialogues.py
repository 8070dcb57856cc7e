"""The dialogues generator (benchmarks/dialogues.py): deterministic, realistic in shape, and honest
about its question styles and held-out halves."""

from __future__ import annotations

import re
from collections.abc import Iterable

from benchmarks import dialogues
from benchmarks.conversations import Corpus
from benchmarks.dialogues import STYLES, generate

_COMMON = {"what", "when", "where", "which", "who", "did", "does", "the", "for", "after", "his", "her"}


# Kinds shared by both halves' values on purpose: a sister is a sister in either.
_CATEGORIES = {"sister", "brother", "cousin", "best friend", "marathon", "half marathon", "10K"}


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def _text_of(corpus: Corpus, keys: Iterable[str]) -> str:
    by_key = {s.key: s for s in corpus.sessions}
    return " ".join(content for key in keys for _, content in by_key[key].messages).lower()


def _said_by_prefix(word: str, text: str) -> bool:
    return word[:4] in text  # about a stem: "moving" counts as said where "moved" was


def test_same_seed_and_half_give_the_same_corpus() -> None:
    assert generate(seed=3, half=0) == generate(seed=3, half=0)
    assert generate(seed=3, half=0).questions != generate(seed=4, half=0).questions


def test_every_style_is_asked_in_both_halves_with_hundreds_of_questions() -> None:
    for half in (0, 1):
        corpus = generate(seed=5, half=half)
        assert {q.style for q in corpus.questions} == set(STYLES)
        assert len(corpus.questions) >= 150
        assert {e for q in corpus.questions for e in q.evidence} <= {s.key for s in corpus.sessions}


def test_sessions_are_named_by_speakers_and_increasing_dates() -> None:
    corpus = generate(seed=5, half=0)
    first = [s for s in corpus.sessions if s.persona == corpus.sessions[0].persona]
    a, b = first[0].persona.split(" and ")
    assert first[0].name.startswith(f"{a} and {b}, ")
    dates = [re.search(r", (\d+ \w+ \d{4})$", s.name) for s in first]
    assert all(dates)
    assert all(20 <= len(s.messages) <= 40 for s in corpus.sessions)
    assert all(a in s.messages[0][1] or b in s.messages[0][1] for s in first)  # a greeting by name


def test_a_quote_question_reuses_its_evidence_sessions_words() -> None:
    for half in (0, 1):
        corpus = generate(seed=5, half=half)
        for q in corpus.questions:
            if q.style != "quote":
                continue
            words = _words(q.text) - _COMMON
            said = _text_of(corpus, q.evidence)
            assert sum(_said_by_prefix(w, said) for w in words) >= len(words) / 2, q.text


def test_a_quote_question_shares_more_words_with_its_evidence_than_a_paraphrase() -> None:
    corpus = generate(seed=5, half=0)

    def share(style: str) -> float:
        asked = [q for q in corpus.questions if q.style == style]
        found = [
            len({w for w in _words(q.text) - _COMMON if w in _text_of(corpus, q.evidence)})
            / max(len(_words(q.text) - _COMMON), 1)
            for q in asked
        ]
        return sum(found) / len(found)

    assert share("quote") > share("paraphrase") + 0.2


def test_multi_questions_span_sessions_and_when_questions_point_at_dated_ones() -> None:
    corpus = generate(seed=5, half=1)
    assert all(len(q.evidence) >= 2 for q in corpus.questions if q.style == "multi")
    assert all(len(q.evidence) == 1 for q in corpus.questions if q.style != "multi")


def test_the_halves_share_no_sentences_names_or_values() -> None:
    def values(half: int) -> set[str]:
        out = {name for name, _ in dialogues.SPEAKERS[half]}
        out |= {line for pair in dialogues.CHITCHAT[half] for line in pair}
        out |= {line for pair in dialogues.GREETINGS[half] for line in pair}
        out |= {line for pair in dialogues.GOODBYES[half] for line in pair}
        out |= set(dialogues.CITIES[half]) | {company for _, company in dialogues.JOBS[half]}
        out |= {q for q, _, _ in dialogues.MOVE_QUESTIONS[half] + dialogues.WORK_QUESTIONS[half]}
        for event in dialogues.EVENTS.values():
            out |= {part for value in event.values[half] for part in value} - _CATEGORIES
            out |= {getattr(event, part)[half] for part in ("told", "quote", "paraphrase", "when")}
        out |= {part for part in dialogues.OPENINGS[half] + dialogues.CLOSINGS[half] if part}
        for choices in dialogues.FILLERS[half].values():
            out |= set(choices)
        return out

    assert not values(0) & values(1)
    speakers = [{s.persona for s in generate(seed=5, half=h).sessions} for h in (0, 1)]
    assert not speakers[0] & speakers[1]


def test_the_two_friends_of_a_pair_never_tell_the_same_event_value() -> None:
    corpus = generate(seed=5, half=0)
    for pair in {s.persona for s in corpus.sessions}:
        texts = [" ".join(c for _, c in s.messages) for s in corpus.sessions if s.persona == pair]
        for event in dialogues.EVENTS.values():
            for value in event.values[0]:
                assert sum(all(part in text for part in value) for text in texts) <= 1, value

"""A session-memory match's relevance (engine.memory.relevance, engine.memory.sessions): made of
the session's own evidence, so an unrelated query scores low however the matches rank, and a
filter on it drops matches without reordering the others."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.memory import sessions
from engine.memory.relevance import RECOMMENDED_MIN_RELEVANCE, relevance
from engine.memory.sessions import SESSION_MEMORY, SESSIONS_OF_MEMORY, SessionIndexes

from .test_session_memory import Memory, embed

PET = ("user", "We adopted a beagle puppy from the shelter and named him Biscuit")
DOOR = ("user", "The hinges of the garden door squeak every morning")
TAXES = ("user", "I still have to file the quarterly tax return for the bakery")
UNRELATED = "quantum chromodynamics on a lattice supercomputer"


def memory_of(*facts: tuple[str, str]) -> Memory:
    memory = Memory()
    for i, fact in enumerate(facts):
        memory.close("acme", f"sess_{i}", "chat", ("user", "Hello again"), fact, ("assistant", "Noted."))
    return memory


def indexes_of(memory: Memory) -> SessionIndexes:
    namespaces = dict(memory.store.namespaces())
    return SessionIndexes(namespaces.get(("acme", SESSION_MEMORY)), namespaces[("acme", SESSIONS_OF_MEMORY)])


def test_an_unrelated_query_has_low_relevance_though_its_best_match_scores_high() -> None:
    matches = memory_of(PET, DOOR, TAXES).query(UNRELATED)
    assert matches, "the fused ranking always finds something"
    assert matches[0].score > 0.5, "the score is scaled against the other matches: it cannot tell"
    assert all(m.relevance is not None and m.relevance < RECOMMENDED_MIN_RELEVANCE for m in matches)


def test_a_paraphrase_of_a_message_has_high_relevance() -> None:
    matches = memory_of(PET, DOOR, TAXES).query("named the beagle puppy Biscuit after the shelter")
    assert matches[0].id == "sess_0"
    assert matches[0].relevance is not None and matches[0].relevance >= RECOMMENDED_MIN_RELEVANCE
    assert all(m.relevance is not None and m.relevance < matches[0].relevance for m in matches[1:])


def test_relevance_does_not_depend_on_the_other_sessions() -> None:
    query = "the beagle Biscuit"
    alone = memory_of(PET).query(query)
    crowded = memory_of(PET, DOOR, TAXES, ("user", "the beagle Biscuit")).query(query)
    pet = next(m for m in crowded if m.id == "sess_0")
    assert pet.relevance == pytest.approx(alone[0].relevance, abs=1e-6)
    assert pet.score != alone[0].score, "while the score is relative to what else was found"


def test_relevance_leaves_the_order_and_scores_of_the_matches_as_fused() -> None:
    memory = Memory()
    said_once = ("user", "beagle Biscuit shelter"), ("user", "tax return for the bakery"), ("user", "door")
    memory.close("acme", "sess_once", "chat", *said_once)
    all_about_it = ("user", "beagle Biscuit"), ("user", "Biscuit from the shelter"), ("user", "the beagle")
    memory.close("acme", "sess_all", "chat", *all_about_it)
    memory.close("acme", "sess_none", "chat", ("user", "my kayak on the lake"))
    indexes = indexes_of(memory)
    for text in ("beagle Biscuit shelter", "tax return", "kayak", "nothing of the sort"):
        vector = embed([text])[0]
        found = sessions.signals(indexes, vector, text, 10)
        fused = sessions._carried(indexes, found, sessions.WEIGHTS, None)[:10]
        matches = sessions.search(indexes, vector, text, 10)
        assert [(m.id, m.score) for m in matches] == fused, text
    first, second, _ = sessions.search(
        indexes, embed(["beagle Biscuit shelter"])[0], "beagle Biscuit shelter", 10
    )
    assert (first.id, second.id) == ("sess_all", "sess_once"), "more said about it, in more ways"
    assert second.relevance is not None and first.relevance is not None
    assert second.relevance > first.relevance, "a message that says exactly this: the more relevant"


def test_min_relevance_drops_the_less_relevant_matches_and_keeps_the_order() -> None:
    memory = memory_of(PET, DOOR, TAXES)
    text = "named the beagle puppy Biscuit after the shelter"
    every = memory.query(text)
    for threshold in (0.0, RECOMMENDED_MIN_RELEVANCE, 0.99):
        kept = memory.query(text, min_relevance=threshold)
        assert kept == [m for m in every if m.relevance is not None and m.relevance >= threshold]
    assert memory.query(text, min_relevance=RECOMMENDED_MIN_RELEVANCE)[0].id == "sess_0"
    assert memory.query(UNRELATED, min_relevance=RECOMMENDED_MIN_RELEVANCE) == []


def test_a_lexical_query_has_relevance_when_it_has_a_vector() -> None:
    memory = memory_of(PET, DOOR)
    vector = embed(["beagle Biscuit"])[0]
    found = sessions.search(indexes_of(memory), vector, "beagle Biscuit", 10, mode="lexical")
    assert found[0].id == "sess_0" and found[0].relevance is not None
    without = sessions.search(indexes_of(memory), None, "beagle Biscuit", 10, mode="lexical")
    assert without[0].relevance is None, "no vector, no relevance"


def test_a_session_with_no_indexed_message_is_judged_by_its_session_entry() -> None:
    memory = Memory()
    memory.close("acme", "sess_tool", "beagle Biscuit", ("tool", '{"ok": true}'))
    closest = sessions.closest_of(indexes_of(memory), embed(["beagle Biscuit"])[0], ["sess_tool"])
    assert closest == {"sess_tool": pytest.approx(1.0, abs=1e-5)}, "the name stands for the session"


@given(st.floats(-1, 1), st.floats(0, 2))
def test_relevance_lies_in_0_1_and_grows_with_the_cosine(cosine: float, step: float) -> None:
    value = relevance(cosine)
    assert 0.0 <= value <= 1.0
    assert relevance(min(1.0, cosine + step)) >= value

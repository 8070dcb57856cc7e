"""The BM25 index (tantivy) and the score fusion."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.memory.fusion import fuse
from engine.memory.lexical import LexicalIndex, query_words


def filled(*texts: str) -> LexicalIndex:
    index = LexicalIndex()
    index.add(enumerate(texts))
    index.commit()
    return index


def test_words_rank_by_bm25_and_writes_show_after_commit() -> None:
    index = filled("the beagle chewed a slipper", "a cat and a dog", "beagle beagle puppy training")
    assert [key for key, _ in index.search("beagle", 5)] == [2, 0], "more of the rare word ranks first"
    assert index.search("Beagles", 5), "stemmed and lower-cased"
    index.add([(7, "a new beagle arrived")])
    assert 7 not in {key for key, _ in index.search("beagle", 5)}, "not visible before commit"
    assert index.commit() and 7 in {key for key, _ in index.search("beagle", 5)}
    assert not index.commit(), "nothing left to commit"


def test_removed_keys_never_come_back_and_a_closed_writer_reopens() -> None:
    index = filled("lisbon trams", "lisbon pastries", "porto wine")
    index.remove([0])
    index.commit()
    assert [key for key, _ in index.search("lisbon", 5)] == [1] and len(index) == 2
    index.close_writer()
    assert not index.writer_open
    index.add([(9, "lisbon castle")])
    index.commit()
    assert {key for key, _ in index.search("lisbon", 5)} == {1, 9}


def test_query_syntax_in_user_text_is_only_words() -> None:
    index = filled('he said "NOT AND OR" -- field:value (x)', "unrelated text")
    assert query_words('field:value AND "NOT" -x (') == ["field", "value", "and", "not", "x"]
    for text in ['"unbalanced', "field:value", "NOT", "a AND", "-", "(((", "*", "text:unrelated"]:
        index.search(text, 5)  # never a parse error
    assert [key for key, _ in index.search("field:value", 5)] == [0]
    assert index.search("", 5) == [] and index.search("!!!", 5) == []


def test_search_among_keys_small_and_large_sets() -> None:
    index = LexicalIndex()
    index.add((i, f"note {i} about gardens") for i in range(6000))
    index.commit()
    assert {key for key, _ in index.search("gardens", 10, among={3, 5})} == {3, 5}
    among = set(range(0, 6000, 2))  # past the term-set limit: filtered after a deeper search
    found = index.search("gardens", 10, among=among)
    assert len(found) == 10 and all(key in among for key, _ in found)
    assert index.search("gardens", 10, among=set()) == []


def test_a_large_index_leaves_out_the_words_most_texts_hold_and_keeps_the_rarest() -> None:
    texts = [f"the cat number{i}" for i in range(8)] + ["the cat beagle", "the dog beagle"]
    pruned, whole = LexicalIndex(prune_above=5, prune_share=0.5), LexicalIndex()
    for index in (pruned, whole):
        index.add(enumerate(texts))
        index.commit()
    # "the" and "cat" are in more than half the texts: only "beagle" is searched (k hits found).
    assert {key for key, _ in pruned.search("the cat beagle", 2)} == {8, 9}
    assert whole.search("the cat beagle", 10)[0][0] == 8
    assert len(whole.search("the cat beagle", 10)) == 10  # every word counts below the size
    # Every word common: the rarest of them still searches.
    assert {key for key, _ in pruned.search("The cats", 9)} == set(range(9))
    assert {key for key, _ in pruned.search("dog", 10)} == {9}


def test_a_pruned_query_finding_fewer_than_k_is_asked_in_full() -> None:
    texts = [f"the cat number{i}" for i in range(8)] + ["the cat beagle", "the dog beagle"]
    pruned = LexicalIndex(prune_above=5, prune_share=0.5)
    pruned.add(enumerate(texts))
    pruned.commit()
    found = pruned.search("the cat beagle", 10)
    assert len(found) == 10 and found[0][0] == 8


def test_a_query_among_a_filters_keys_is_not_pruned() -> None:
    texts = [f"the meeting notes {i}" for i in range(20)] + ["zebra crossing"]
    pruned, whole = LexicalIndex(prune_above=10, prune_share=0.5), LexicalIndex()
    for index in (pruned, whole):
        index.add(enumerate(texts))
        index.commit()
    among = {0, 1}  # "meeting" is common in the namespace, yet the only word these two hold
    assert {key for key, _ in whole.search("meeting zebra", 10, among=among)} == {0, 1}
    assert {key for key, _ in pruned.search("meeting zebra", 10, among=among)} == {0, 1}


def test_fusion_scales_each_ranking_and_weights_them() -> None:
    fused = dict(fuse({"a": [("x", 0.9), ("y", 0.5)], "b": [("y", 12.0), ("z", 3.0)]}, {"a": 1.0, "b": 1.0}))
    assert fused["y"] == 0.5, "worst by a (0) and best by b (1), over a total weight of 2"
    assert fused["x"] == 0.5 and fused["z"] == 0.0
    only_a = fuse({"a": [("x", 0.9), ("y", 0.5)], "b": [("y", 12.0)]}, {"a": 1.0, "b": 0.0})
    assert only_a == [("x", 1.0), ("y", 0.0)], "a weight of 0 leaves a ranking out"
    assert fuse({"a": [("x", 1.0), ("x", 0.2)]}, {"a": 1.0}) == [("x", 1.0)], (
        "an item counts once, at its best"
    )
    assert fuse({"a": []}, {"a": 1.0}) == [] and fuse({"a": [("x", 1.0)]}, {}) == []


rankings = st.dictionaries(
    st.sampled_from(["dense", "lexical", "summary"]),
    st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(-5, 50, allow_nan=False)), max_size=8),
)


@given(rankings, st.dictionaries(st.sampled_from(["dense", "lexical", "summary"]), st.floats(0, 3)))
def test_fused_scores_lie_in_0_1_and_are_ordered(scored: dict, weights: dict) -> None:
    fused = fuse(scored, weights)
    values = [score for _, score in fused]
    assert all(-1e-9 <= v <= 1 + 1e-9 for v in values)
    assert values == sorted(values, reverse=True)
    assert len({item for item, _ in fused}) == len(fused)


def test_a_store_keeps_only_a_few_writers_open_and_every_namespace_still_answers() -> None:
    import numpy as np

    from engine.memory.index import IndexParams
    from engine.memory.store import MAX_OPEN_WRITERS, MemoryStore, QueryVectors, UpsertVectors

    store = MemoryStore(IndexParams())
    vector = np.ones((1, 4), dtype=np.float32) / 2
    for replaying in (True, False):  # replay, too, closes writers past the limit
        store.replaying = replaying
        for i in range(MAX_OPEN_WRITERS + 4):
            store.apply_batch(
                [UpsertVectors("o", f"ns{i}", (f"a{replaying}",), vector, ({},), texts=("hello",))]
            )
        writers = [index.lexical.writer_open for _, index in store.namespaces() if index.lexical is not None]
        assert sum(writers) == MAX_OPEN_WRITERS
    for i in range(MAX_OPEN_WRITERS + 4):
        (found,) = store.apply_batch([QueryVectors("o", f"ns{i}", None, 5, None, "hello", "lexical")])
        assert sorted(m.id for m in found) == ["aFalse", "aTrue"]

"""A BM25 index of texts, one per namespace that holds texts: tantivy, in memory.

Documents are keyed by the namespace's FAISS id, so a lexical hit and a dense hit name the same
entry. The index is derived state: the namespace keeps each entry's text, snapshots hold the
texts, and recovery adds them again (tantivy's own files would be a second log to keep in step).

Writes are buffered in tantivy's writer and made visible by `commit`, which the memory store calls
once per batch of writes, not once per op (a commit is costly). A writer holds memory and a thread, so
the store keeps only a few open (`close_writer` releases one; the next write opens it again).

Query text never reaches tantivy's query language: it is cut into words first, so quotes, colons,
minus signs and words such as AND or NOT in a user's text are words, not syntax.

A hit's key is read from a fast field (a column), not from a stored document, which would mean
decompressing a block of documents for each hit. In an index of more than `prune_above` texts, a
query leaves out its words found in more than `prune_share` of them (at least its rarest word
stays): such a word's BM25 weight is small (its inverse document frequency is below ln 2 at half
the texts), yet scoring it visits most of the index. Below that size every word counts, so small
namespaces rank exactly as BM25 does. A query pruned so finds fewer than k hits is asked again in
full, and a query within a few keys (a filter's) is never pruned: the keys bound its cost.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import tantivy

_KEY = "key"
_TEXT = "text"
_WORD = re.compile(r"\w+", re.UNICODE)
_WRITER_HEAP_BYTES = 15_000_000  # tantivy's floor for one thread; more only means fewer flushes
_MAX_QUERY_WORDS = 64
# A key set this large costs tantivy more to build than searching past it: above it, search deeper
# and drop hits outside the set.
TERM_SET_LIMIT = 4096
_DEEPER = 8


def _schema() -> Any:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field(_KEY, stored=False, indexed=True, fast=True)
    # Stemmed English words, with term frequencies (BM25 needs them) but no positions: no phrases.
    builder.add_text_field(_TEXT, stored=False, tokenizer_name="en_stem", index_option="freq")
    return builder.build()


_SCHEMA = _schema()
_MUST = tantivy.Occur.Must
_SHOULD = tantivy.Occur.Should
# The terms tantivy's `en_stem` tokenizer makes of a text (its documented pipeline), so that a
# query word's document frequency can be looked up before it is searched.
_TERMS = (
    tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
    .filter(tantivy.Filter.remove_long(40))
    .filter(tantivy.Filter.lowercase())
    .filter(tantivy.Filter.stemmer("english"))
    .build()
)


def query_words(text: str) -> list[str]:
    """The words of a query, lower-cased (so AND/OR/NOT are words), at most _MAX_QUERY_WORDS."""
    return [word.lower() for word in _WORD.findall(text)][:_MAX_QUERY_WORDS]


class LexicalIndex:
    def __init__(self, prune_above: int | None = None, prune_share: float = 0.5) -> None:
        self._prune_above = prune_above  # None: never leave words out
        self._prune_share = prune_share
        self._index = tantivy.Index(_SCHEMA)
        self._writer: Any = None
        self._dirty = False
        self._docs = 0

    def __len__(self) -> int:
        return self._docs

    @property
    def writer_open(self) -> bool:
        return self._writer is not None

    def add(self, entries: Iterable[tuple[int, str]]) -> None:
        writer = self._open()
        for key, text in entries:
            doc = tantivy.Document()
            doc.add_unsigned(_KEY, key)
            doc.add_text(_TEXT, text)
            writer.add_document(doc)
            self._docs += 1
            self._dirty = True

    def remove(self, keys: Sequence[int]) -> None:
        if not keys:
            return
        self._open().delete_documents_by_query(tantivy.Query.term_set_query(_SCHEMA, _KEY, list(keys)))
        self._docs -= len(keys)
        self._dirty = True

    def commit(self) -> bool:
        """Make every write so far visible to searches; False if there was nothing to commit."""
        if not self._dirty:
            return False
        self._writer.commit()
        self._index.reload()
        self._dirty = False
        return True

    def close_writer(self) -> None:
        self.commit()
        if self._writer is not None:
            self._writer.wait_merging_threads()  # consumes the writer: its thread and memory go
            self._writer = None

    def _open(self) -> Any:
        if self._writer is None:
            self._writer = self._index.writer(heap_size=_WRITER_HEAP_BYTES, num_threads=1)
        return self._writer

    def search(self, text: str, k: int, among: Collection[int] | None = None) -> list[tuple[int, float]]:
        """Up to k (key, BM25 score), best first; `among`: only these keys. Sees committed writes."""
        words = query_words(text)
        if not words or k <= 0 or not self._docs or (among is not None and not among):
            return []
        searcher = self._index.searcher()
        if among is not None and len(among) <= TERM_SET_LIMIT:
            # Every word counts: the key set bounds what scoring visits, and which words are common
            # is decided over the namespace, not over the keys (the only words among them may be those).
            only = tantivy.Query.const_score_query(
                tantivy.Query.term_set_query(_SCHEMA, _KEY, list(among)), 0.0
            )
            query = tantivy.Query.boolean_query([(_MUST, self._full_query(words)), (_MUST, only)])
            return self._hits(searcher, query, k)
        pruned = self._pruned_query(words, searcher)
        found = self._within(searcher, self._full_query(words) if pruned is None else pruned, k, among)
        if pruned is not None and len(found) < k:
            found = self._within(searcher, self._full_query(words), k, among)  # the common words found more
        return found

    def _within(
        self, searcher: Any, query: Any, k: int, among: Collection[int] | None
    ) -> list[tuple[int, float]]:
        found = self._hits(searcher, query, k if among is None else k * _DEEPER)
        return found[:k] if among is None else [hit for hit in found if hit[0] in among][:k]

    def _full_query(self, words: list[str]) -> Any:
        query, _ = self._index.parse_query_lenient(" ".join(words), [_TEXT])
        return query

    def _pruned_query(self, words: list[str], searcher: Any) -> Any:
        """The query without the words too common to matter, or None when every word counts."""
        docs = searcher.num_docs
        if self._prune_above is None or docs <= self._prune_above:
            return None
        terms = [term for word in words for term in _TERMS.analyze(word)]
        if not terms:
            return None
        frequency = {term: searcher.doc_freq(_TEXT, term) for term in set(terms)}
        kept = [term for term in terms if frequency[term] <= self._prune_share * docs]
        if len(kept) == len(terms):
            return None
        if not kept:
            rarest = min(frequency.values())
            kept = [term for term in terms if frequency[term] == rarest]
        return tantivy.Query.boolean_query(
            [(_SHOULD, tantivy.Query.term_query(_SCHEMA, _TEXT, term)) for term in kept]
        )

    def _hits(self, searcher: Any, query: Any, k: int) -> list[tuple[int, float]]:
        hits = searcher.search(query, k, count=False).hits
        keys = searcher.fast_field_values(_KEY, [address for _, address in hits]) if hits else []
        return [(int(key), float(score)) for (score, _), key in zip(hits, keys, strict=True)]

"""A BM25 index of texts, one per namespace that holds texts: tantivy, in memory.

Documents are keyed by the namespace's FAISS id, so a lexical hit and a dense hit name the same
entry. The index is derived state: the namespace keeps each entry's text, snapshots hold the
texts, and recovery adds them again (tantivy's own files would be a second log to keep in step).

Writes are buffered in tantivy's writer and made visible by `commit`, which the memory store calls
once per batch of writes, not once per op (a commit is costly). A writer holds memory and a thread, so
the store keeps only a few open (`close_writer` releases one; the next write opens it again).

Query text never reaches tantivy's query language: it is cut into words first, so quotes, colons,
minus signs and words such as AND or NOT in a user's text are words, not syntax.
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
_TERM_SET_LIMIT = 4096
_DEEPER = 8


def _schema() -> Any:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field(_KEY, stored=True, indexed=True, fast=True)
    # Stemmed English words, with term frequencies (BM25 needs them) but no positions: no phrases.
    builder.add_text_field(_TEXT, stored=False, tokenizer_name="en_stem", index_option="freq")
    return builder.build()


_SCHEMA = _schema()
_MUST = tantivy.Occur.Must


def query_words(text: str) -> list[str]:
    """The words of a query, lower-cased (so AND/OR/NOT are words), at most _MAX_QUERY_WORDS."""
    return [word.lower() for word in _WORD.findall(text)][:_MAX_QUERY_WORDS]


class LexicalIndex:
    def __init__(self) -> None:
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
        query, _ = self._index.parse_query_lenient(" ".join(words), [_TEXT])
        if among is None or len(among) > _TERM_SET_LIMIT:
            found = self._hits(query, k if among is None else k * _DEEPER)
            return found[:k] if among is None else [hit for hit in found if hit[0] in among][:k]
        only = tantivy.Query.const_score_query(tantivy.Query.term_set_query(_SCHEMA, _KEY, list(among)), 0.0)
        return self._hits(tantivy.Query.boolean_query([(_MUST, query), (_MUST, only)]), k)

    def _hits(self, query: Any, k: int) -> list[tuple[int, float]]:
        searcher = self._index.searcher()
        hits = searcher.search(query, k, count=False).hits
        return [(int(searcher.doc(address)[_KEY][0]), float(score)) for score, address in hits]

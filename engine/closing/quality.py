"""Is a model's summary worth keeping, and if not, what replaces it. Pure text functions.

A small model asked to summarize a chat often does something else: it continues the dialogue
(`user: …`, `Caroline: …` lines), echoes the transcript, loops on a phrase, or answers with the
prompt's own words ("A two-sentence summary …"). `degeneracy` names which, and `extractive` makes
the replacement: the session's most salient sentences, in their order, scored so that the
concrete words a later question asks about (names, places, numbers, dates) are kept.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import tantivy

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\u2019-]*")  # with ' and the typographic apostrophe
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_SPEAKER_LINE = re.compile(r"^\s*[\"'*]*([A-Z][\w.'-]*(?: [A-Z][\w.'-]*){0,2})\s*:\s+\S")
_ROLE_LINE = re.compile(
    r"^\s*[\"'*]*(user|assistant|system|tool|human|ai|bot)\s*:", re.IGNORECASE | re.MULTILINE
)
_BOILERPLATE = re.compile(
    r"two-sentence summary|here is (a|the) summary|summary of (this|the) conversation:|as an ai\b|"
    r"i'm sorry|i cannot|conversation:\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER = re.compile(r"\d")
_CALENDAR = """january february march april may june july august september october november december
    monday tuesday wednesday thursday friday saturday sunday"""
_MONTHS = frozenset(_CALENDAR.split())
_STOP_WORDS = """a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing done down during each even ever every
    few for from further get got had has have having he her here hers him his how i if in into is
    it its itself just know like me more most much my no nor not now of off on once only or other
    our out over own really same she should so some such than that the their them then there these
    they this those through to too under until up us very was way we well were what when where which
    while who whom why will with would yeah yes you your yours oh okay ok hey hi hello thanks thank
    great good nice sure lot things thing something going want think one"""
_STOP = frozenset(_STOP_WORDS.split())
# Words a summary uses about a conversation without their having been said in it.
_REPORTING_WORDS = """user users assistant conversation conversations discuss discussed discussing
    discussion talk talked talking asks asked asking ask question questions answer answered
    answers advice advised
    advises suggest suggested suggests suggesting recommend recommended recommends recommendation
    recommendations explain explained explains mention mentioned mentions share shared shares
    sharing tips help helped helps provide provided provides providing offer offered offers also
    several various including include includes about topic topics summary they their them"""
# Lower-cased Snowball stems, so plan, plans and planning are one word.
_STEMS = (
    tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
    .filter(tantivy.Filter.lowercase())
    .filter(tantivy.Filter.stemmer("english"))
    .build()
)
_REPORTING = frozenset(_STEMS.analyze(_REPORTING_WORDS))
REPEAT_NGRAM = 4
REPEAT_TIMES = 3
ECHO_NGRAM = 8
ECHO_SHARE = 0.5
GROUNDED_SHARE = 0.5  # of a summary's content words, at least this many come from the conversation
EXTRACTIVE_WORDS = 70
MIN_WORDS = 5  # a shorter sentence ("Hi, it's Maya again.") says too little to stand for a session


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def degeneracy(text: str, transcript: Sequence[str] = ()) -> str | None:
    """Why `text` is not a usable summary of a conversation whose messages are `transcript`, or
    None: `empty`, `boilerplate`, `dialogue`, `repetition`, `echo` (copies the conversation), or
    `ungrounded` (too many of its content words were never said: a small model inventing)."""
    words = _words(text)
    if len(words) < 3:
        return "empty"
    if _BOILERPLATE.search(text):
        return "boilerplate"
    lines = [line for line in text.splitlines() if line.strip()]
    speakers = [m for m in (_SPEAKER_LINE.match(line) for line in lines) if m]
    if (
        _ROLE_LINE.search(text)
        or len(speakers) >= 2
        or (speakers and len(lines) == 1 and text.count(":") >= 2)
    ):
        return "dialogue"
    counts = Counter(_ngrams(words, REPEAT_NGRAM))
    if counts and counts.most_common(1)[0][1] >= REPEAT_TIMES:
        return "repetition"
    if not transcript:
        return None
    grams = _ngrams(words, ECHO_NGRAM)
    if grams:
        said_grams = set()
        for message in transcript:
            said_grams.update(_ngrams(_words(message), ECHO_NGRAM))
        if sum(gram in said_grams for gram in grams) / len(grams) >= ECHO_SHARE:
            return "echo"
    content = [w for w in _STEMS.analyze(text) if w not in _STOP and w not in _REPORTING and len(w) > 3]
    if content:
        said = {w for message in transcript for w in _STEMS.analyze(message)}
        if sum(w in said for w in content) / len(content) < GROUNDED_SHARE:
            return "ungrounded"
    return None


def extractive(messages: Sequence[str], max_words: int = EXTRACTIVE_WORDS) -> str:
    """The most salient sentences of `messages` (in their order), up to about `max_words` words.

    A sentence scores by the session-wide frequency of its content words (what the session is
    about), plus a bonus for words a question tends to ask for: numbers, dates, and capitalized
    words that do not start the sentence (names and places). Divided by the square root of its
    length, so long sentences do not win by size alone."""
    sentences = [s.strip() for m in messages for s in _SENTENCE_END.split(m) if len(_words(s)) >= MIN_WORDS]
    if not sentences:
        return " ".join(" ".join(messages).split()[:max_words])
    frequency = Counter(w for s in sentences for w in _words(s) if w not in _STOP and len(w) > 2)

    def score(sentence: str) -> float:
        raw = _WORD.findall(sentence)
        words = [w.lower() for w in raw]
        content = sum(frequency[w] for w in set(words) if w in frequency)
        concrete = sum(
            1
            for i, w in enumerate(raw)
            if _NUMBER.search(w)
            or w.lower() in _MONTHS
            or (i > 0 and w[0].isupper() and w.lower() not in _STOP)
        )
        return (content + 3.0 * concrete) / math.sqrt(len(words))

    ranked = sorted(range(len(sentences)), key=lambda i: -score(sentences[i]))
    chosen: list[int] = []
    used = 0
    seen: set[str] = set()
    for i in ranked:
        key = " ".join(_words(sentences[i]))
        if key in seen:
            continue
        length = len(_words(sentences[i]))
        if chosen and used + length > max_words:
            continue
        chosen.append(i)
        seen.add(key)
        used += length
        if used >= max_words:
            break
    return " ".join(_clip(sentences[i], max_words) for i in sorted(chosen))


def _clip(sentence: str, max_words: int) -> str:
    words = sentence.split()
    return sentence if len(words) <= max_words else " ".join(words[:max_words]) + "…"

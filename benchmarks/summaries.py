"""What the summarizer makes of the recall benchmark's sessions, and how well a summary alone
finds its session.

    python -m benchmarks.summaries [--personas 4] [--sessions 24] [--seed 7] [--summarizer DIR]
                                   [--models-dir DIR] [--out FILE]

Every session of the recall corpus (benchmarks/conversations.py) is summarized four ways, in this
process with the engine's own classes (no Ray, no HTTP):
- `before`: the model with the prompt and decoding of the release before session memory indexed
  turns (the instruction "Write a two-sentence summary of this conversation…", no reply prefix,
  no repetition penalty, no n-gram block), its text kept as it came;
- `model now`: the model with today's prompt and decoding, its text kept as it came;
- `stored now`: what the engine stores: that text, or the extractive summary where the
  degeneracy check sets it aside;
- `extractive`: the extractive summary alone.

For each: how many texts the detector flags and why (model text is judged against the
conversation as well; extracts, which quote it by design, on their own text), and summary-only
recall: each question's nearest summaries (all-MiniLM-L6-v2, cosine), a hit when its evidence
session is among the top k.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.conversations import generate
from benchmarks.stamp import describe, machine
from engine.closing.quality import degeneracy, extractive
from engine.closing.summary import precut
from engine.config import SummarizerConfig
from engine.models.embedder import Embedder
from engine.models.summarizer import Conversation, Summarizer

HERE = Path(__file__).resolve().parent
BEFORE = {
    "instruction": "Write a two-sentence summary of this conversation: its topic and what was answered.",
    "reply_prefix": "",
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--personas", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4, help="conversations per generate call")
    parser.add_argument("--summarizer", type=Path, help="a local model directory (default: the engine's)")
    parser.add_argument("--models-dir", type=Path, help="where the default model's conversion is cached")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "summaries.json")
    args = parser.parse_args(argv)

    corpus = generate(args.personas, args.sessions, seed=args.seed)
    conversations = [
        Conversation(s.name, precut(s.messages, keep_first=2, max_input_tokens=2048), len(s.messages))
        for s in corpus.sessions
    ]
    said = [[content for _, content in s.messages] for s in corpus.sessions]
    texts: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or Path(tmp)
        for name, settings in (("before", BEFORE), ("model now", {})):
            summarizer = Summarizer(SummarizerConfig(path=args.summarizer, **settings), models_dir)
            started = time.perf_counter()
            out: list[str] = []
            for i in range(0, len(conversations), args.batch):
                for result in summarizer.summarize(conversations[i : i + args.batch]):
                    out.append(result.text)
            seconds[name] = (time.perf_counter() - started) / len(conversations)
            texts[name] = out
            del summarizer
    texts["stored now"] = [
        text if degeneracy(text, conversation) is None else extractive(conversation)
        for text, conversation in zip(texts["model now"], said, strict=True)
    ]
    texts["extractive"] = [extractive(conversation) for conversation in said]

    embedder = Embedder(None)
    questions = embedder.embed([q.text for q in corpus.questions])
    keys = [s.key for s in corpus.sessions]
    rows: dict[str, Any] = {}
    for name, summaries in texts.items():
        vectors = embedder.embed([text or "-" for text in summaries])
        ranked = np.argsort(-(questions @ vectors.T), axis=1)
        found = {
            k: statistics.fmean(
                any(keys[j] in q.evidence for j in order[:k])
                for q, order in zip(corpus.questions, ranked, strict=True)
            )
            for k in (1, 5, 10)
        }
        # Extracts quote the conversation by design, so they are judged on their own text (empty,
        # boilerplate, dialogue, repetition); model text is judged against the conversation too.
        against = name in ("before", "model now")
        flags = Counter(
            str(degeneracy(text, conversation if against else ()))
            for text, conversation in zip(summaries, said, strict=True)
        )
        rows[name] = {
            **{f"recall@{k}": round(v, 3) for k, v in found.items()},
            "flagged": round(1 - flags.pop("None", 0) / len(summaries), 3),
            "judged_against_the_conversation": against,
            "reasons": dict(flags),
            "seconds_per_session": round(seconds.get(name, 0.0), 2),
            "example": summaries[1][:300],
        }
        print(name, json.dumps(rows[name]))
    report = {
        "machine": describe(machine()),
        "command": f"python -m benchmarks.summaries --personas {args.personas} --sessions {args.sessions} "
        f"--seed {args.seed} --batch {args.batch}",
        "sessions": len(corpus.sessions),
        "questions": len(corpus.questions),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

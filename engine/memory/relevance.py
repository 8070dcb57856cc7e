"""How relevant a prior session is to a query, on a scale of its own: a match's `relevance`, 0 to 1.

A session-memory match's `score` is fused from rankings each scaled by its own spread
(engine.memory.fusion), so it says how a session compares with the others found, not how well it
answers: the best match of a question nothing in memory answers still scores high. `relevance` is
made only of the session's own evidence, unscaled: the cosine similarity between the query and the
closest of the session's indexed messages, through a logistic function fitted on the relevance
benchmark (benchmarks/relevance.py: the evidence sessions of questions whose answer is in memory,
against the best match of questions no session answers). So it reads as the chance that the session
holds what was asked, on that benchmark, and it grows with the cosine: it never reorders matches
more than the cosine would.

The session's whole-conversation vector was tried beside it and left out: its fitted weight came
out negative (it says whose conversation it is, not whether the thing asked was said), which would
make relevance fall as a session grows closer to the query.

Pure: a number in, a number out. The coefficients belong to the default embedder
(all-MiniLM-L6-v2): another embedder's cosines sit elsewhere, so measure it again with
`python -m benchmarks.relevance` before trusting a threshold.
"""

from __future__ import annotations

import math

# Fitted by benchmarks/relevance.py (benchmarks/README.md, "How relevant a match is"): relevance is
# 0.5 where the closest message's cosine is -BIAS / SLOPE.
SLOPE = 17.9
BIAS = -7.83
# The min_relevance docs/memory.md recommends: the best balanced accuracy on the benchmark's tuning
# data (evidence kept, unrelated questions' best match dropped).
RECOMMENDED_MIN_RELEVANCE = 0.3


def relevance(cosine: float) -> float:
    """The relevance of a session whose closest message has this cosine similarity to the query."""
    return 1.0 / (1.0 + math.exp(-(SLOPE * cosine + BIAS)))

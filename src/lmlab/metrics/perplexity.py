"""Perplexity: exp of the mean negative log-likelihood (nats) per target token.

The unit is whatever the targets are; for the word-level models every whitespace word and every ``<eos>``
is one target, and an out-of-vocabulary word is one ``<unk>`` target scored like any other word.
"""

from __future__ import annotations

import math


def perplexity(nll_sum: float, count: int) -> float:
    if count <= 0:
        raise ValueError("perplexity of zero tokens is undefined")
    mean = nll_sum / count
    return math.exp(mean) if mean < 700 else float("inf")

"""Distribution-shift statistics between a training corpus and a new one, over the training vocabulary.

Both corpora are mapped to the training vocabulary first (out-of-vocabulary words count as ``<unk>``), so
the two unigram distributions live on the same support. Zero counts are smoothed by adding ``alpha`` to every
type (default 0.5, Jeffreys' prior) so KL stays finite; JS needs no smoothing but uses the same estimates.
"""

from __future__ import annotations

import math

import torch


def unigram(ids: torch.Tensor, vocab_size: int, alpha: float = 0.5) -> torch.Tensor:
    counts = torch.bincount(ids, minlength=vocab_size).double() + alpha
    return counts / counts.sum()


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p || q) in nats."""
    mask = p > 0
    return float((p[mask] * (p[mask] / q[mask]).log()).sum())


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen-Shannon divergence in nats (between 0 and ln 2)."""
    m = 0.5 * (p + q)
    return 0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m)


# Buckets by how often the target word occurred in the training split.
BUCKETS = (("frequent", 1000, math.inf), ("medium", 100, 1000), ("rare", 1, 100))


def frequency_buckets(nlls: torch.Tensor, targets: torch.Tensor, train_counts: torch.Tensor, unk_id: int) -> dict:
    """Tokens, mean NLL and perplexity per bucket: frequent (>= 1000 training occurrences), medium (100-999),
    rare (1-99), and ``<unk>`` targets (whatever their count)."""
    counts = train_counts[targets]
    is_unk = targets == unk_id
    masks = {name: (counts >= lo) & (counts < hi) & ~is_unk for name, lo, hi in BUCKETS}
    masks["unk"] = is_unk
    out = {}
    for name, mask in masks.items():
        n = int(mask.sum())
        mean = float(nlls[mask].mean()) if n else float("nan")
        out[name] = {"tokens": n, "share": n / max(1, targets.numel()), "nll_mean": mean,
                     "ppl": math.exp(mean) if n else float("nan")}
    return out

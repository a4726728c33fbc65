from __future__ import annotations

import math

import torch

from lmlab.metrics.shift import frequency_buckets, js_divergence, kl_divergence, unigram
from lmlab.metrics.text_stats import (
    distinct_n,
    longest_repeated_span,
    repeated_ngram_rate,
    text_statistics,
)


def test_text_statistics_on_a_hand_made_sample():
    tokens = "a b c a b c a b <eos> d <unk> <eos> e".split()
    words = [t for t in tokens if t != "<eos>"]  # a b c a b c a b d <unk> e
    assert distinct_n(words, 1) == 6 / 11
    assert distinct_n(words, 2) == 6 / 10  # ab bc ca ab bc ca ab bd d<unk> <unk>e: 6 distinct
    assert repeated_ngram_rate(words, 4) == 2 / 8  # abca bcab cabc abca(rep) bcab(rep) cabd abd<unk> bd<unk>e
    assert longest_repeated_span(words) == 5  # "a b c a b" occurs at 0 and 3 (overlapping)
    stats = text_statistics(tokens)
    assert stats["unk_rate"] == 1 / 11
    assert stats["mean_sentence_length"] == (8 + 2 + 1) / 3


def test_kl_and_js_closed_forms():
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    q = torch.tensor([0.25, 0.75], dtype=torch.float64)
    assert kl_divergence(p, p) == 0
    assert math.isclose(kl_divergence(p, q), 0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert 0 < js_divergence(p, q) < math.log(2)
    disjoint = js_divergence(torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert math.isclose(disjoint, math.log(2))


def test_unigram_smoothing_keeps_every_type():
    p = unigram(torch.tensor([0, 0, 1]), 4, alpha=0.5)
    assert torch.allclose(p, torch.tensor([2.5, 1.5, 0.5, 0.5], dtype=torch.float64) / 5)


def test_frequency_buckets_partition_the_targets():
    train_counts = torch.tensor([5000, 500, 50, 0, 2000])  # id 3 is <unk>
    targets = torch.tensor([0, 1, 2, 3, 4, 4])
    nlls = torch.tensor([1.0, 2.0, 3.0, 4.0, 1.0, 3.0], dtype=torch.float64)
    b = frequency_buckets(nlls, targets, train_counts, unk_id=3)
    assert {k: v["tokens"] for k, v in b.items()} == {"frequent": 3, "medium": 1, "rare": 1, "unk": 1}
    assert math.isclose(b["frequent"]["ppl"], math.exp(5 / 3))

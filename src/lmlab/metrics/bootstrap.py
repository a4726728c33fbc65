"""Classification scores with percentile-bootstrap confidence intervals (resampling the items)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Callable, Sequence


def accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float:
    return sum(g == p for g, p in zip(gold, predicted)) / len(gold) if gold else float("nan")


def macro_f1(gold: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> float:
    """The mean over ``classes`` of each class's F1 (0 for a class never predicted or never true)."""
    scores = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, predicted))
        fp = sum(g != c and p == c for g, p in zip(gold, predicted))
        fn = sum(g == c and p != c for g, p in zip(gold, predicted))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def bootstrap_ci(statistic: Callable[[list[int]], float], n: int, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over ``resamples`` draws of n item indices with
    replacement (seeded, so the interval is reproducible)."""
    rng = random.Random(seed)
    values = sorted(statistic([rng.randrange(n) for _ in range(n)]) for _ in range(resamples))
    low = values[int((1 - level) / 2 * resamples)]
    high = values[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return low, high


def bootstrap_mean_ci(values: Sequence[float], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` (items resampled with replacement)."""
    values = list(values)
    return bootstrap_ci(lambda idx: sum(values[i] for i in idx) / len(idx), len(values), resamples, seed)


def classification_report(gold: Sequence[str], predicted: Sequence[str], classes: Sequence[str],
                          resamples: int = 1000, seed: int = 0) -> dict:
    """Accuracy and macro-F1 with 95% bootstrap intervals, the verdict distribution, the confusion matrix
    (gold -> predicted counts) and the majority-class baseline on the same items."""
    gold, predicted = list(gold), list(predicted)
    n = len(gold)
    majority, majority_n = Counter(gold).most_common(1)[0]

    def pick(idx, f):
        return f([gold[i] for i in idx], [predicted[i] for i in idx])

    return {
        "questions": n,
        "accuracy": accuracy(gold, predicted),
        "accuracy_ci95": bootstrap_ci(lambda idx: pick(idx, accuracy), n, resamples, seed),
        "macro_f1": macro_f1(gold, predicted, classes),
        "macro_f1_ci95": bootstrap_ci(lambda idx: pick(idx, lambda g, p: macro_f1(g, p, classes)), n, resamples, seed),
        "predicted": dict(Counter(predicted)),
        "gold": dict(Counter(gold)),
        "confusion": {g: dict(Counter(p for p, gg in zip(predicted, gold) if gg == g)) for g in classes},
        "majority_class": majority,
        "majority_baseline": majority_n / n,
    }

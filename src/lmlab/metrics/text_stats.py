"""Statistics of generated text: diversity, repetition and <unk> use, as plain functions of token lists."""

from __future__ import annotations

from lmlab.data.vocab import EOS, UNK


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams (Li et al. 2016); 0 for text shorter than n."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(tokens: list[str], n: int = 4) -> float:
    """Share of n-grams that already occurred earlier in the same text."""
    seen, repeats = set(), 0
    grams = ngrams(tokens, n)
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams) if grams else 0.0


def longest_repeated_span(tokens: list[str]) -> int:
    """Length of the longest token sequence that occurs at least twice (occurrences may overlap).

    A span of length L repeating implies one of every shorter length does, so the answer is found by doubling
    L until it fails and then bisecting, each probe a rolling-hash pass with exact comparison on hash hits:
    O(n log L) instead of the O(n^2) of comparing every pair of positions."""
    ids = {}
    seq = [ids.setdefault(t, len(ids) + 1) for t in tokens]
    low, high = 0, 1
    while high < len(seq) and _repeats(seq, high):
        low, high = high, min(2 * high, len(seq))
    high -= 1
    while low < high:
        mid = (low + high + 1) // 2
        if _repeats(seq, mid):
            low = mid
        else:
            high = mid - 1
    return low


_MOD, _BASE = (1 << 61) - 1, 1_000_003


def _repeats(seq: list[int], length: int) -> bool:
    """Whether some span of ``length`` occurs twice in ``seq``."""
    power = pow(_BASE, length, _MOD)
    h = 0
    first: dict[int, list[int]] = {}
    for i, x in enumerate(seq):
        h = (h * _BASE + x) % _MOD
        if i >= length:
            h = (h - seq[i - length] * power) % _MOD
        if i >= length - 1:
            start = i - length + 1
            starts = first.setdefault(h, [])
            if any(seq[s:s + length] == seq[start:start + length] for s in starts):
                return True
            starts.append(start)
    return False


def text_statistics(tokens: list[str]) -> dict[str, float]:
    """All statistics of one sample. Sentences end at ``<eos>``; the last one may be unfinished."""
    words = [t for t in tokens if t != EOS]
    sentences, length = [], 0
    for t in tokens:
        if t == EOS:
            sentences.append(length)
            length = 0
        else:
            length += 1
    if length:
        sentences.append(length)
    return {
        "tokens": len(tokens),
        "distinct_1": distinct_n(words, 1),
        "distinct_2": distinct_n(words, 2),
        "distinct_3": distinct_n(words, 3),
        "repeated_4gram_rate": repeated_ngram_rate(words, 4),
        "longest_repeated_span": longest_repeated_span(words),
        "unk_rate": words.count(UNK) / len(words) if words else 0.0,
        "mean_sentence_length": sum(sentences) / len(sentences) if sentences else 0.0,
    }

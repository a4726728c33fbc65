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
    """Length of the longest token sequence that occurs at least twice (occurrences may overlap)."""
    best = 0
    n = len(tokens)
    # Dynamic programming over pairs of end positions: O(n^2), fine for generated samples.
    prev = [0] * (n + 1)
    for i in range(1, n + 1):
        cur = [0] * (n + 1)
        for j in range(i + 1, n + 1):
            if tokens[i - 1] == tokens[j - 1]:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


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

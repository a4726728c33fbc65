"""Per-token surprisal of a text under any lmlab model: the scoring behind ``lmlab serve``'s surprisal view.

One function, :func:`score`, for both kinds of model:
- a word-level PTB run: the text is normalised to PTB conventions as ``lmlab eval`` does (sentences, one
  ``<eos>`` each; an out-of-vocabulary word is scored as ``<unk>`` and marked ``oov``); a token is a word, and
  the records are ``lmlab eval --tokens``'s (:func:`lmlab.recipes.evaluate.token_rows`);
- a pretrained model: the text after its start token, scored with ``lmlab ft-eval``'s sliding windows
  (:func:`lmlab.pretrained.perplexity.token_records`); a token is a BPE/SentencePiece piece.

Both give a word-aligned view: a word's surprisal is the sum over its tokens (for a pretrained model, the
tokens whose first visible character lies in that whitespace-separated word). The summary's perplexity and bits
per word equal ``lmlab eval``'s perplexity (word models: words plus ``<eos>``) and ``lmlab ft-eval``'s word
perplexity (pretrained: whitespace words) on the same text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from lmlab.data.normalize import normalize_text
from lmlab.data.vocab import EOS
from lmlab.errors import LmlabError

LN2 = math.log(2)
MAX_WORDS = 5000  # the cap the page shows; longer texts are scored up to it
WINDOW, STRIDE = 512, 256  # ft-eval's cpu preset


@dataclass
class Pretrained:
    """A pretrained causal LM with its tokenizer, as ``lmlab serve`` holds it."""

    name: str
    model: Any
    tokenizer: Any


def cap_words(text: str, max_words: int) -> tuple[str, int]:
    """The text cut after its first ``max_words`` whitespace-separated words, and how many words it had."""
    spans = _word_spans(text)
    if len(spans) <= max_words:
        return text, len(spans)
    return text[: spans[max_words][0]].rstrip(), len(spans)


def score(model, text: str, kind: str = "raw", max_words: int = MAX_WORDS) -> dict:
    """``{"model", "tokens", "words", "summary"}`` of ``text`` under a TrainedModel or a :class:`Pretrained`."""
    if not text.strip():
        raise LmlabError("the text is empty: paste some text, upload a file or pick a corpus")
    text, total_words = cap_words(text, max_words)
    result = _pretrained(model, text) if isinstance(model, Pretrained) else _word_level(model, text, kind)
    result["summary"].update(words_in_text=total_words, capped=total_words > max_words, max_words=max_words)
    return result


def _word_level(trained, text: str, kind: str) -> dict:
    from lmlab.recipes.evaluate import token_rows

    words = [w for sentence in normalize_text(text, kind) for w in (*sentence, EOS)]
    if not any(w != EOS for w in words):
        raise LmlabError("the text holds no words to score")
    rows = token_rows(trained, "text", words)
    tokens = [{"text": r["word"], "scored_as": r["token"], "oov": r["oov"], "bits": r["bits"], "prob": r["prob"],
               "rank": r["rank"], "top": r["top"], "word": i} for i, r in enumerate(rows)]
    nll = sum(r["nll"] for r in rows)
    view = [{"text": t["text"], "bits": t["bits"], "oov": t["oov"]} for t in tokens]
    return {"model": trained.name, "kind": "word-level", "tokens": tokens, "words": view,
            "summary": {"unit": "word (PTB-normalised, one <eos> per sentence; OOV scored as <unk>)",
                        "nll": nll, "targets": len(rows), "ppl": math.exp(nll / len(rows)),
                        "bits_per_word": nll / len(rows) / LN2, "oov": sum(t["oov"] for t in tokens)}}


def _pretrained(p: Pretrained, text: str) -> dict:
    from lmlab.pretrained.perplexity import token_records

    records = token_records(p.model, p.tokenizer, text, WINDOW, STRIDE)
    spans = _word_spans(text)
    words = [{"text": text[a:b], "bits": 0.0, "oov": False} for a, b in spans]
    tokens, w = [], 0
    for r in records:
        start, end = r["span"]
        visible = next((i for i in range(start, end) if not text[i].isspace()), None)
        if visible is not None:
            while w + 1 < len(spans) and visible >= spans[w + 1][0]:
                w += 1
        bits = r["nll"] / LN2
        if words:
            words[w]["bits"] += bits
        tokens.append({"text": r["token"], "oov": False, "bits": bits, "prob": math.exp(-r["nll"]), "rank": r["rank"],
                       "top": r["top"], "word": w})
    nll = sum(r["nll"] for r in records)
    n_words, n_bytes = max(1, len(spans)), len(text.encode("utf-8"))
    return {"model": p.name, "kind": "pretrained", "tokens": tokens, "words": words,
            "summary": {"unit": "whitespace word (sum of its tokens); token = the model's own tokenizer",
                        "nll": nll, "targets": len(records), "token_ppl": math.exp(nll / len(records)),
                        "ppl": math.exp(nll / n_words), "bits_per_word": nll / n_words / LN2,
                        "bits_per_byte": nll / n_bytes / LN2, "oov": 0}}


def _word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]

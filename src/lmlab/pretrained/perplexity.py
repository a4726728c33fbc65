"""Perplexity of texts under a pretrained causal LM, in three units.

The text is scored with a sliding window (``window`` tokens of context, advanced by ``stride``; every token is
scored once, with at least ``window - stride`` tokens before it except at the start). The text starts with the
model's start-of-document token, so its first word is scored too. A model whose tokenizer puts BOS before every
text (Gemma) also gets BOS before every later window: it was trained never to see a sequence without it, and
Gemma-3-270m scored windows that start mid-text at 21-34% higher perplexity than the same tokens after BOS
(docs/finetune.md). Models without a BOS of their own (GPT-2, SmolLM2) see the plain windows of the Hugging
Face guide. Token-level perplexity divides the total NLL
by the number of scored tokens; word-level by the whitespace-separated words of the original text; byte-level
by its UTF-8 bytes. The last two are tokenizer-independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlab.pretrained.domain_data import bos_ids, encode, start_ids
from lmlab.pretrained.likelihood import model_device


@dataclass
class TextScore:
    nll: float  # nats, summed over the text
    tokens: int
    words: int
    bytes: int

    def as_dict(self) -> dict:
        return {"nll": self.nll, "tokens": self.tokens, "words": self.words, "bytes": self.bytes,
                "token_ppl": math.exp(self.nll / self.tokens), "word_ppl": math.exp(self.nll / self.words),
                "byte_ppl": math.exp(self.nll / self.bytes), "bits_per_byte": self.nll / self.bytes / math.log(2)}


def _windows(model, ids: list[int], window: int, stride: int, last: str, prefix: list[int] = ()):
    """(log-probabilities, targets) of each window's newly scored tokens, in order: every token of ``ids[1:]``
    exactly once. Window k starts at k * stride and scores the tokens after the previous window's end;
    ``last="end"`` (lmlab's default) starts the final window at ``len - window`` instead, so the text's last tokens
    get a full window of context; ``last="stride"`` keeps every window on the stride grid, as the Hugging Face
    perplexity guide does. ``prefix`` (a BOS) goes before every window but the first, which starts the text."""
    if not 0 < stride <= window - 1:
        raise ValueError("need 0 < stride < window")
    if last not in ("end", "stride"):
        raise ValueError("last must be 'end' or 'stride'")
    device = model_device(model)
    scored_to, k = 1, 0  # ids[:scored_to] are context only or already scored
    while scored_to < len(ids):
        end = min(len(ids), max(scored_to + stride, window))
        begin = max(0, end - window) if last == "end" else k * stride
        k += 1
        head = list(prefix) if begin > 0 else []
        x = torch.tensor(head + ids[begin:end], device=device)[None]
        logits = model(input_ids=x).logits[0, len(head):].float()
        first = scored_to - begin - 1  # logits[k] predicts ids[begin + k + 1]
        yield logits[first:-1].log_softmax(-1), x[0, len(head) + scored_to - begin:]
        scored_to = end


@torch.no_grad()
def sliding_nll(model, ids: list[int], window: int, stride: int, last: str = "end",
                prefix: list[int] = ()) -> tuple[float, int]:
    """(summed NLL, number of scored tokens) of ``ids[1:]`` given everything before, one window at a time
    (:func:`_windows`)."""
    total, count = 0.0, 0
    for logp, targets in _windows(model, ids, window, stride, last, prefix):
        total += F.nll_loss(logp, targets, reduction="sum").item()
        count += len(targets)
    return total, count


@torch.no_grad()
def token_records(model, tokenizer, text: str, window: int, stride: int, top: int = 5) -> list[dict]:
    """Every token of ``text`` (scored after the start token, with the same windows as :func:`score_texts`): its
    text, character span, NLL in nats, rank (1 = the model's first choice) and the ``top`` most likely tokens.
    Their NLLs sum to :func:`score_texts`'s NLL of the same text."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = encoded["input_ids"], encoded["offset_mapping"]
    rows, i = [], 0
    for logp, targets in _windows(model, start_ids(tokenizer) + ids, window, stride, "end", bos_ids(tokenizer)):
        nll = -logp.gather(1, targets[:, None])[:, 0]
        ranks = (logp > -nll[:, None]).sum(1) + 1
        top_logp, top_ids = logp.topk(min(top, logp.shape[-1]), dim=-1)
        for j in range(len(targets)):
            rows.append({"token": tokenizer.decode([ids[i]]), "span": list(spans[i]), "nll": float(nll[j]),
                         "rank": int(ranks[j]), "top": [{"token": tokenizer.decode([int(t)]), "prob": math.exp(float(p))}
                                                        for t, p in zip(top_ids[j], top_logp[j])]})
            i += 1
    return rows


def score_texts(model, tokenizer, texts: list[str], window: int, stride: int,
                start_every_window: bool = True) -> TextScore:
    """Each text scored as its own document (start token + text); with ``start_every_window``, a model with a
    BOS of its own gets it before every window (module docstring)."""
    prefix = bos_ids(tokenizer) if start_every_window else []
    nll, tokens = 0.0, 0
    for text in texts:
        n, t = sliding_nll(model, start_ids(tokenizer) + encode(tokenizer, text), window, stride, prefix=prefix)
        nll, tokens = nll + n, tokens + t
    return TextScore(nll, tokens, sum(len(t.split()) for t in texts), sum(len(t.encode("utf-8")) for t in texts))

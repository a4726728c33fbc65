"""A domain preference source without human labels: PubMed abstracts in the manner of SPIN (Chen et al., 2024,
"Self-Play Fine-Tuning Converts Weak Language Models to Strong Language Models").

For an abstract of at least three sentences, the prompt is its title and every sentence but the last (cut from
the front to ``context_tokens``), the chosen reply is the real last sentence (the authors' conclusion, written by
a human) and the rejected reply is the starting model's own sampled continuation of the same prompt, cut at its
first sentence end. DPO then moves the model from its own text towards the human text. Pairs come from
document-level splits of the corpus (lmlab.pretrained.domain_data: train for training, valid held out), so no
abstract, and no prompt, is on both sides. Sampling is seeded and batched; the pairs of a (model, settings) are
kept in a cache file, so a beta sweep samples once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import torch
from tqdm import tqdm

from lmlab.pretrained.domain_data import encode, limit, load_domain, start_ids

log = logging.getLogger("lmlab")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\[])")


def split_conclusion(text: str) -> tuple[str, str] | None:
    """(everything before the last sentence, the last sentence) of an abstract, or None when it has fewer than
    three sentences or a last sentence outside 6-80 words (a fragment or a run-on, not a conclusion)."""
    title, _, abstract = text.partition("\n")
    sentences = SENTENCE_END.split(abstract.strip())
    if len(sentences) < 3 or not 6 <= len(sentences[-1].split()) <= 80:
        return None
    return f"{title}\n{' '.join(sentences[:-1])}", sentences[-1]


def first_sentence(text: str) -> str:
    """A sampled continuation up to its first sentence end (or all of it)."""
    text = text.strip()
    parts = SENTENCE_END.split(text, maxsplit=1)
    return parts[0].strip()


def spin_pairs(model, tokenizer, split: str, count: int, context_tokens: int, max_new_tokens: int, seed: int = 0,
               batch: int = 16, cache: Path | None = None) -> list:
    """``count`` SPIN pairs from the ``split`` ("train" or "valid") abstracts of PubMed, read from ``cache``
    when it holds them."""
    from lmlab.pretrained.preferences import Pair

    if cache and cache.is_file():
        rows = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
        if len(rows) >= count:
            return [Pair(r["prompt"], r["chosen"], r["rejected"]) for r in rows[:count]]
    docs = getattr(load_domain("pubmed"), split)
    items = [s for s in (split_conclusion(d.text) for d in limit(docs, 0, seed)) if s][: count + count // 10]
    prompts = [_cut_front(tokenizer, head, context_tokens) for head, _ in items]
    samples = sample_continuations(model, tokenizer, prompts, max_new_tokens, seed, batch)
    eos = tokenizer.eos_token
    pairs = [Pair(p, f" {real}{eos}", f" {fake}{eos}") for p, (_, real), fake in zip(prompts, items, samples)
             if fake and fake != real][:count]
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text("".join(json.dumps(vars(p)) + "\n" for p in pairs), encoding="utf-8")
    return pairs


def cache_path(root: Path, model: str, split: str, settings: dict) -> Path:
    key = hashlib.sha256(json.dumps([model, split, settings], sort_keys=True).encode()).hexdigest()[:16]
    return root / f"pubmed-spin-{split}-{key}.jsonl"


def _cut_front(tokenizer, text: str, tokens: int) -> str:
    ids = encode(tokenizer, text)
    return text if len(ids) <= tokens else tokenizer.decode(ids[-tokens:])


@torch.no_grad()
def sample_continuations(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int = 0,
                         batch: int = 16) -> list[str]:
    """One sampled continuation per prompt (temperature 1, top-p 0.9; left-padded batches), cut at its first
    sentence end."""
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for i in tqdm(range(0, len(prompts), batch), desc="SPIN samples", unit="batch", leave=False):
            torch.manual_seed(seed + i)
            ids = [start_ids(tokenizer) + encode(tokenizer, p) for p in prompts[i:i + batch]]
            width = max(map(len, ids))
            x = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(x)
            for row, seq in enumerate(ids):
                x[row, width - len(seq):] = torch.tensor(seq)
                mask[row, width - len(seq):] = 1
            generated = model.generate(input_ids=x.to(device), attention_mask=mask.to(device), do_sample=True,
                                       temperature=1.0, top_p=0.9, top_k=0, max_new_tokens=max_new_tokens,
                                       pad_token_id=tokenizer.pad_token_id)
            out += [first_sentence(tokenizer.decode(g[width:], skip_special_tokens=True)) for g in generated]
    finally:
        tokenizer.padding_side = side
    return out

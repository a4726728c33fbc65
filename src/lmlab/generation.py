"""Sampling from any of our models: greedy, temperature, top-k, top-p, with a repetition penalty.

How a model is stepped (recurrent state, key/value caches) belongs to its family (lmlab.families), so the
same sampling code serves the word-level models and pretrained Hugging Face models.
Every random draw comes from one seeded ``torch.Generator``: same model, prompt, settings and seed, same text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

STRATEGIES = ("greedy", "temperature", "top-k", "top-p")


@dataclass(frozen=True)
class SamplingSettings:
    strategy: str = "greedy"
    temperature: float = 1.0
    top_k: int = 40
    top_p: float = 0.9
    repetition_penalty: float = 1.0  # 1.0 = off; > 1 discourages tokens already in the text (Keskar et al. 2019)
    max_tokens: int = 30

    @property
    def label(self) -> str:
        """The strategy with the settings that matter for it, e.g. ``top-p p=0.9 T=0.9``."""
        parts = {"greedy": [], "temperature": [f"T={self.temperature:g}"],
                 "top-k": [f"k={self.top_k}", f"T={self.temperature:g}"],
                 "top-p": [f"p={self.top_p:g}", f"T={self.temperature:g}"]}[self.strategy]
        if self.repetition_penalty != 1.0:
            parts.append(f"rep={self.repetition_penalty:g}")
        return " ".join([self.strategy, *parts])

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy '{self.strategy}': choose one of {', '.join(STRATEGIES)}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 1 or self.repetition_penalty <= 0:
            raise ValueError("need temperature > 0, 0 < top_p <= 1, top_k >= 1 and repetition_penalty > 0")


def next_token(logits: torch.Tensor, history: list[int], s: SamplingSettings, generator: torch.Generator) -> int:
    """Choose the next id from a (V,) logit vector."""
    logits = logits.double().clone()
    if s.repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)))
        # CTRL's penalty: shrink a positive logit, grow a negative one, so the token always becomes less likely.
        logits[seen] = torch.where(logits[seen] > 0, logits[seen] / s.repetition_penalty,
                                   logits[seen] * s.repetition_penalty)
    if s.strategy == "greedy":
        return int(logits.argmax())
    logits = logits / s.temperature
    if s.strategy == "top-k":
        kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
        logits[logits < kth] = float("-inf")
    elif s.strategy == "top-p":
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        drop = probs.cumsum(-1) - probs >= s.top_p
        logits[order[drop]] = float("-inf")
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


@torch.no_grad()
def generate(model, family, prompt_ids: list[int], s: SamplingSettings, seed: int = 0, use_cache: bool = True,
             banned: list[int] = ()) -> list[int]:
    """Continue ``prompt_ids`` (which must be non-empty) by ``s.max_tokens`` ids; ``family`` (lmlab.families)
    steps the model: recurrent state, the Transformer's key/value cache, or a pretrained model's own cache.
    ``banned`` ids are never chosen (their probability is set to zero before any strategy applies), e.g. a
    word-level model's ``<unk>``."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    step = family.stepper(model, next(model.parameters()).device, use_cache)
    tokens = list(prompt_ids)
    out: list[int] = []
    logits = step(tokens, len(tokens))
    # long generations show progress (on stderr), so they never look like a hang
    for _ in tqdm(range(s.max_tokens), desc="generating", unit="tok", leave=False, disable=s.max_tokens < 1000):
        if banned:
            logits = logits.clone()
            logits[list(banned)] = float("-inf")
        token = next_token(logits, tokens, s, generator)
        tokens.append(token)
        out.append(token)
        logits = step(tokens, 1)
    return out

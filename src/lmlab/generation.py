"""Sampling from any of our models: greedy, temperature, top-k, top-p, with a repetition penalty.

Recurrent models carry their state from step to step; the Transformer keeps a key/value cache (and, past
its context length, re-reads the last ``context_length - 1`` tokens, since its positions are absolute).
Pretrained Hugging Face models use their own key/value cache (family ``pretrained``).
Every random draw comes from one seeded ``torch.Generator``: same model, prompt, settings and seed, same text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
def generate(model, family: str, prompt_ids: list[int], s: SamplingSettings, seed: int = 0,
             use_cache: bool = True) -> list[int]:
    """Continue ``prompt_ids`` (which must be non-empty) by ``s.max_tokens`` ids."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    tokens = list(prompt_ids)
    out: list[int] = []
    if family == "recurrent":
        step = _recurrent_stepper(model, device)
    elif family == "transformer":
        step = _transformer_stepper(model, device, use_cache)
    else:  # "pretrained": a Hugging Face causal LM
        step = _pretrained_stepper(model, device)
    logits = step(tokens, new=len(tokens))
    for _ in range(s.max_tokens):
        token = next_token(logits, tokens, s, generator)
        tokens.append(token)
        out.append(token)
        logits = step(tokens, new=1)
    return out


def _recurrent_stepper(model, device):
    state = model.initial_state(1, model.encoder.weight)

    def step(tokens, new):
        nonlocal state
        x = torch.tensor(tokens[-new:], device=device).view(-1, 1)
        logits, state = model(x, state)
        return logits[-1, 0]

    return step


def _transformer_stepper(model, device, use_cache: bool):
    context = model.context_length
    cache = model.new_cache() if use_cache else None

    def step(tokens, new):
        nonlocal cache
        if not use_cache:
            return model(torch.tensor(tokens[-context:], device=device).view(1, -1))[0, -1]
        if cache[0].length + new > context:  # out of positions: start again from the most recent tokens
            cache = model.new_cache()
            new = min(len(tokens), context - 1)
        return model(torch.tensor(tokens[-new:], device=device).view(1, -1), cache)[0, -1]

    return step


def _pretrained_stepper(model, device):
    """A Hugging Face causal LM with its own key/value cache: the same sampling code serves every model."""
    past = None

    def step(tokens, new):
        nonlocal past
        out = model(input_ids=torch.tensor([tokens[-new:]], device=device), cache=past, use_cache=True)
        past = out.cache
        return out.logits[0, -1]

    return step

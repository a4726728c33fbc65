"""Log-likelihoods of continuations under a causal LM: the scoring shared by PubMedQA and fill-in-the-blank."""

from __future__ import annotations

import torch


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def continuation_logprobs(model, prompt: list[int], continuations: list[list[int]]) -> list[float]:
    """log P(continuation | prompt), summed over its tokens, for each continuation (one padded batch)."""
    device = model_device(model)
    seqs = [prompt + c for c in continuations]
    width = max(map(len, seqs))
    x = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(x)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    logp = model(input_ids=x, attention_mask=mask).logits.float().log_softmax(-1)
    out = []
    for i, c in enumerate(continuations):
        positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(c), device=device)
        out.append(logp[i, positions, torch.tensor(c, device=device)].sum().item())
    return out

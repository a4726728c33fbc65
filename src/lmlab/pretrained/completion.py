"""Greedy completions of fixed prompts, to read beside the numbers."""

from __future__ import annotations

import torch

from lmlab.pretrained.domain_data import encode, start_ids
from lmlab.pretrained.likelihood import model_device


@torch.no_grad()
def complete(model, tokenizer, prompt: str, max_new_tokens: int, repetition_penalty: float, start: bool = True) -> str:
    """Greedy continuation of ``prompt`` (after the start-of-document token unless ``start`` is False)."""
    ids = torch.tensor([(start_ids(tokenizer) if start else []) + encode(tokenizer, prompt)], device=model_device(model))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, repetition_penalty=repetition_penalty,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

"""The pretrained family: Hugging Face causal LMs (packaged GGUF, directories, hub ids) as far as the shared
code needs them, which is generation: the model's own key/value cache, so the same sampling code
(lmlab.generation) serves every model. Their scoring is lmlab.pretrained.perplexity's sliding window over BPE
tokens, which has no word-level batches or columns to share with the other families."""

from __future__ import annotations

import torch


class PretrainedFamily:
    name = "pretrained"

    def stepper(self, model, device, use_cache=True):
        past = None

        def step(tokens, new):
            nonlocal past
            out = model(input_ids=torch.tensor([tokens[-new:]], device=device), cache=past, use_cache=True)
            past = out.cache
            return out.logits[0, -1]

        return step


PRETRAINED = PretrainedFamily()

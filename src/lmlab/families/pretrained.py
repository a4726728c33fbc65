"""The pretrained family: Hugging Face causal LMs (packaged GGUF, directories, hub ids) as far as the shared
code needs them. Generation uses the model's own key/value cache, so the same sampling code (lmlab.generation)
serves every model; scoring is lmlab.pretrained.perplexity's sliding window over BPE tokens."""

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

    def evaluation_note(self, window: int, stride: int) -> str:
        return (f"BPE tokens of the model's tokenizer; sliding windows of {window} tokens with stride {stride}, "
                "every token scored once")


PRETRAINED = PretrainedFamily()

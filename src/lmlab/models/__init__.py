"""Model components: from-scratch RNN, LSTM and Transformer LMs, their torch.nn twins, and a builder."""

from __future__ import annotations

from typing import Any

from torch import nn

from lmlab.models.recurrent import RecurrentLM
from lmlab.models.transformer import TransformerLM

FAMILIES = {"rnn": "recurrent", "lstm": "recurrent", "transformer": "transformer"}


def build_model(model_config: dict[str, Any], vocab_size: int) -> nn.Module:
    """Build a model from the ``[model]`` table of a config."""
    options = dict(model_config)
    arch = options.pop("arch")
    if arch in ("rnn", "lstm"):
        return RecurrentLM(vocab_size, cell=arch, **options)
    if arch == "transformer":
        return TransformerLM(vocab_size, **options)
    raise ValueError(f"unknown architecture '{arch}'")


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total trainable parameters (tied weights counted once) and the same without embedding matrices.

    Embeddings are the token and position tables plus an untied output matrix: the lookup tables whose size
    grows with the vocabulary or context rather than with the network's depth and width.
    """
    unique = {id(p): p for p in model.parameters() if p.requires_grad}
    total = sum(p.numel() for p in unique.values())
    embedding_ids = set()
    for name in ("encoder", "tok_emb", "pos_emb", "decoder", "head"):
        module = getattr(model, name, None)
        if module is not None:
            embedding_ids.add(id(module.weight))
    embedding = sum(unique[i].numel() for i in embedding_ids if i in unique)
    return {"total": total, "non_embedding": total - embedding}

"""Model components: from-scratch Elman RNN, GRU, LSTM and Transformer LMs and their torch.nn twins.

Which model a config builds is the family's business (lmlab.families); models know nothing of data or configs.
"""

from __future__ import annotations

from torch import nn

from lmlab.models.recurrent import RecurrentLM
from lmlab.models.transformer import TransformerLM

__all__ = ["RecurrentLM", "TransformerLM", "parameter_counts"]


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

"""LoRA (Hu et al. 2021) through peft: one place that turns the ``[lora]`` config into adapters."""

from __future__ import annotations

from lmlab.config import Lora
from lmlab.errors import LmlabError


def lora_config(cfg: Lora):
    from peft import LoraConfig

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")


def with_lora(model, cfg: Lora):
    """``model`` with trainable adapters on ``cfg.target_modules`` (checked against the model's modules)."""
    from peft import get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        raise LmlabError(f"lora.target_modules {missing} are not modules of this model: choose from "
                         f"{sorted(n for n in names if n.endswith(('proj', 'attn', 'fc', 'c_fc', 'c_proj')))}")
    return get_peft_model(model, lora_config(cfg))

"""Model families: what differs between architectures, behind one interface, chosen in one place.

A family knows how to build its model from the ``[model]`` config, how to cut a token stream into training
batches (and carry state between them), how to score a stream (:meth:`token_nlls`), how to step generation
(:meth:`stepper`) and how to describe its evaluation. Recipes ask :func:`family_of` and never branch on an
architecture's name. Adding a family = one module here + its model under ``lmlab.models`` + presets + its
nn-twin test (see docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lmlab.errors import LmlabError
from lmlab.families.base import Family
from lmlab.families.pretrained import PRETRAINED
from lmlab.families.recurrent import RECURRENT
from lmlab.families.transformer import TRANSFORMER

ARCHITECTURES: dict[str, Family] = {"rnn": RECURRENT, "gru": RECURRENT, "lstm": RECURRENT, "transformer": TRANSFORMER}


def family_of(arch: str) -> Family:
    if arch not in ARCHITECTURES:
        raise LmlabError(f"unknown architecture '{arch}': choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def build_model(model_cfg: Any, vocab_size: int):
    """The model of a ``[model]`` config (a schema dataclass or its dict)."""
    options = dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else dict(model_cfg)
    return family_of(options["arch"]).build(options, vocab_size)


__all__ = ["ARCHITECTURES", "Family", "PRETRAINED", "build_model", "family_of"]

"""Load a finished training run (config, vocabulary, best weights) for evaluation and sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab import rundir
from lmlab.data.vocab import Vocabulary
from lmlab.errors import LmlabError
from lmlab.models import FAMILIES, build_model
from lmlab.scoring import score_settings


@dataclass
class TrainedModel:
    name: str  # the run directory's name, used as the model's label
    run_dir: Path
    config: dict
    vocab: Vocabulary
    model: torch.nn.Module
    family: str
    final: dict

    def score_settings(self) -> dict:
        """The evaluation settings the run used, so every later evaluation scores text the same way."""
        return score_settings(self.config["data"])


def load_trained(run_dir: Path, device: str = "cpu", impl: str | None = None) -> TrainedModel:
    """The best checkpoint of a run; ``impl`` may swap scratch/nn (same parameter names, same function)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LmlabError(f"run directory {run_dir} not found: pass the --out of a finished lmlab train")
    final = rundir.read_json(run_dir / rundir.FINAL)
    config = final["config"]
    vocab = Vocabulary.load(run_dir / rundir.VOCAB)
    model_cfg = dict(config["model"], impl=impl or config["model"]["impl"])
    model = build_model(model_cfg, len(vocab))
    state = rundir.load_checkpoint(run_dir / rundir.BEST)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise LmlabError(f"{run_dir / rundir.BEST} does not match the run's config ({type(e).__name__}): "
                         "the checkpoint is from another run; retrain") from e
    model.to(device).eval()
    return TrainedModel(run_dir.name, run_dir, config, vocab, model, FAMILIES[config["model"]["arch"]], final)

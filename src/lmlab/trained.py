"""Load a finished training run (config, vocabulary, best weights) for evaluation and sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab import results
from lmlab.config import TrainConfig, build, load_train, merge, to_dict
from lmlab.data.vocab import Vocabulary
from lmlab.errors import LmlabError
from lmlab.families import Family, family_of
from lmlab.training import rundir


@dataclass
class TrainedModel:
    name: str  # the run directory's name, used as the model's label
    run_dir: Path
    config: TrainConfig
    vocab: Vocabulary
    model: torch.nn.Module
    family: Family
    final: results.TrainFinal
    made_from: str  # the digest of the run's final.json, which results made from this model record

    def score_settings(self) -> dict:
        """The evaluation settings the run used, so every later evaluation scores text the same way."""
        return self.family.score_settings(self.config.data)

    def token_nlls(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.family.token_nlls(self.model, inputs, targets, **self.score_settings())


def recorded_config(recorded: dict) -> TrainConfig:
    """A run's config.json as a typed config; keys added to the presets after the run was recorded take the
    values of its preset today (they did not exist, so the run behaved as their preset value says)."""
    preset = load_train(recorded["model"]["arch"], recorded.get("preset", "cpu"))
    return build(TrainConfig, merge(to_dict(preset), recorded))


def is_run(path: Path) -> bool:
    return (Path(path) / rundir.FINAL).is_file() and (Path(path) / rundir.VOCAB).is_file()


def finished_run(run_dir: Path) -> results.TrainFinal:
    """A finished run's final numbers (neither weights nor vocabulary loaded: a results checkout has only these),
    or the error that says what to pass instead."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LmlabError(f"no run directory at {run_dir}: pass the --out of a finished lmlab train")
    if not (run_dir / rundir.FINAL).is_file():
        raise LmlabError(f"{run_dir} is not a finished lmlab train run (no final.json): "
                         "finish it with lmlab train … --resume")
    return results.read(run_dir / rundir.FINAL, results.TrainFinal)


def load_trained(run_dir: Path, device: str = "cpu", impl: str | None = None) -> TrainedModel:
    """The best checkpoint of a run; ``impl`` may swap scratch/nn (same parameter names, same function)."""
    run_dir = Path(run_dir)
    final = finished_run(run_dir)
    if not is_run(run_dir):
        raise LmlabError(f"{run_dir} is not a finished lmlab train run (no vocab.txt beside its final.json): copy the "
                         "whole run directory, or retrain")
    config = recorded_config(final.config)
    vocab = Vocabulary.load(run_dir / rundir.VOCAB)
    if impl:
        config.model.impl = impl
    family = family_of(config.model.arch)
    model = family.build(to_dict(config.model), len(vocab))
    state = rundir.load_checkpoint(run_dir / rundir.BEST)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError) as e:
        raise LmlabError(f"{run_dir / rundir.BEST} does not match the run's config ({type(e).__name__}): "
                         "the checkpoint is from another run; retrain") from e
    model.to(device).eval()
    return TrainedModel(run_dir.name, run_dir, config, vocab, model, family, final, rundir.final_digest(run_dir))

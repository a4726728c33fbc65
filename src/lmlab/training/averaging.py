"""Weight averaging over the end of a run: the uniform mean of the weights after every optimiser step from a
chosen step on (Polyak–Ruppert averaging; AWD-LSTM's averaged SGD, Merity et al. 2018; stochastic weight
averaging, Izmailov et al. 2018).

Averaging never changes the trajectory: training keeps stepping the raw weights, and the mean is a second
copy beside them. So each validation scores both, and a run's best checkpoint is whichever of the two was
lower on validation; ``metrics.jsonl`` keeps both perplexities, which makes every averaged run its own ablation
of averaging at no training cost.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


class WeightAverage:
    """The running mean of ``net``'s parameters over the steps from ``start_step`` (1-based) on."""

    def __init__(self, start_step: int):
        self.start_step = start_step
        self.averaged: AveragedModel | None = None  # made at the first averaged step: no copy before it is needed

    @property
    def active(self) -> bool:
        return self.averaged is not None

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module

    @property
    def count(self) -> int:
        return int(self.averaged.n_averaged) if self.active else 0

    def update(self, net: torch.nn.Module, step: int) -> None:
        """Call after optimiser step ``step``; the first call at or after ``start_step`` starts the mean."""
        if step < self.start_step:
            return
        if self.averaged is None:
            self.averaged = AveragedModel(net)
        self.averaged.update_parameters(net)

    def state_dict(self) -> dict | None:
        return self.averaged.state_dict() if self.active else None

    def load_state_dict(self, state: dict | None, net: torch.nn.Module) -> None:
        if state is not None:
            self.averaged = AveragedModel(net)
            self.averaged.load_state_dict(state)

"""Learning-rate schedules as ``torch.optim.lr_scheduler.LambdaLR`` factors, one for every recipe.

Linear warm-up over ``warmup`` steps (step k runs at (k+1)/(warmup+1) of the rate, as nanoGPT), then
- ``cosine``: decay to ``min_ratio`` of the rate over the planned steps (the right choice for a fixed budget);
- ``linear``: straight down to ``min_ratio`` over the planned steps (Li, Yumer & Ramanan, "Budgeted Training",
  ICLR 2020: linear decay to zero is the schedule to beat when the budget is fixed);
- ``plateau``: the rate is divided by ``anneal`` after every epoch whose validation loss did not improve
  (Zaremba et al. 2014; pytorch/examples word_language_model);
- ``constant``.
The factor is a small object, so ``LambdaLR.state_dict()`` saves its plateau scale and its plan, and a resume
restores them.

A time-budgeted run may re-plan its length while it trains (``lmlab.training.budget``). The decay is a function
of progress through the plan, from 0 after warm-up to 1 at the last step; a re-plan at step s keeps the progress
reached at s and spreads the rest over the new remaining steps, so the rate never jumps. The plan is the list of
``(step, total steps)`` pairs, the first at step 0; the factor built from a whole plan gives every step the
rate that the run re-planning as it went gave it, which is how a replay reproduces the run.
"""

from __future__ import annotations

import math

import torch

KINDS = ("constant", "cosine", "linear", "plateau")


class WarmupDecay:
    def __init__(self, kind: str, total_steps: int, warmup: int = 0, min_ratio: float = 0.0, anneal: float = 4.0,
                 plan: list[list[int]] = ()):
        if kind not in KINDS:
            raise ValueError(f"unknown schedule '{kind}': choose one of {', '.join(KINDS)}")
        self.kind, self.warmup = kind, warmup
        self.min_ratio, self.anneal, self.scale = min_ratio, anneal, 1.0
        first = plan[0][1] if plan else total_steps
        self.segments = [[0, max(first, 1), 0.0]]  # [from step, planned total, progress reached at that step]
        for step, total in plan[1:]:
            self.replan(step, total)

    def replan(self, step: int, total_steps: int) -> None:
        """From ``step`` on, the plan ends after ``total_steps`` steps."""
        self.segments.append([step, max(total_steps, step + 1), self._progress(step)])

    def _progress(self, step: int) -> float:
        start, total, reached = next(s for s in reversed(self.segments) if s[0] <= step)
        start = max(start, self.warmup)
        return min(1.0, reached + (1 - reached) * max(0, step - start) / max(1, total - start))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.scale * (step + 1) / (self.warmup + 1)
        progress = self._progress(step)
        if self.kind == "cosine":
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "linear":
            return self.min_ratio + (1 - self.min_ratio) * (1 - progress)
        return self.scale


def scheduler(optimizer, kind: str, total_steps: int, warmup: int = 0, min_ratio: float = 0.0,
              anneal: float = 4.0, plan: list[list[int]] = ()) -> torch.optim.lr_scheduler.LambdaLR:
    """Call ``.step()`` after every optimiser step; step k of training then runs at ``lr * factor(k)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(kind, total_steps, warmup, min_ratio, anneal,
                                                                    plan))


def on_plateau(sched: torch.optim.lr_scheduler.LambdaLR) -> None:
    """After an epoch without improvement: a ``plateau`` schedule divides the rate from the next step on."""
    factor = sched.lr_lambdas[0]
    if factor.kind != "plateau":
        return
    factor.scale /= factor.anneal
    for group, base in zip(sched.optimizer.param_groups, sched.base_lrs):
        group["lr"] = base * factor(sched.last_epoch)
    sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]

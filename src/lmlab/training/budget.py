"""Time-budgeted training: turn a wall-time budget into a number of optimiser steps before training, and keep
that number true to the budget while training.

A schedule planned over elapsed time would make every run depend on the machine's speed of the moment. lmlab
measures instead (Li, Yumer & Ramanan, "Budgeted Training", ICLR 2020, plan the schedule over the budget; they
find linear decay to zero best): a few training steps on a throwaway copy of the model give the seconds per
step (their median), one validation pass its cost; the steps that fit the budget with a validation after every
data epoch and at the end become ``train.steps``, recorded in ``config.json``. The learning-rate schedule is then
planned over those steps. The probe runs under saved random states, so a budgeted run and its replay draw the
same numbers.

A ten-second probe is only as good as the machine's speed in those seconds: on this project's 2-core machine
one plan ran 18% slower than its probe (72 minutes for a 60-minute budget); another probe measured 0.47 s/step
where the run then took 0.38 (a fifth of the budget would have gone unused). So after every validation
(``train.replan``, on by default) the steps that still fit are counted again from the last epoch's seconds per
step and its validation's cost (the machine's speed now); when they differ from the plan by more than
``REPLAN_TOLERANCE`` of the steps left, the plan changes from that step on: the schedule keeps the progress it
has reached and spreads the rest over the new remaining steps (lmlab.training.schedule), and ``config.json``
records every change in ``train.plan = [[0, N0], [step, new total], ...]``. A run whose budget is spent ends at
that validation with its best checkpoint. ``--set "train.plan=[[0, N0], [s1, N1], ...]"`` replays the run
exactly (a plan without changes: ``--set train.steps=N``).
"""

from __future__ import annotations

import copy
import io
import logging
import math
import random
import statistics
import time

import numpy as np
import torch

from lmlab.training import runtime
from lmlab.training.step import optimizer_step

log = logging.getLogger("lmlab")
WARMUP_STEPS = 3     # not timed: first-call allocations, thread start-up
PROBE_SECONDS = 10   # time at least this long (at most 5% of the budget) ...
PROBE_STEPS = 1000   # ... or this many steps, whichever comes first
REPLAN_TOLERANCE = 0.02  # re-plan when the steps that fit move by more than this share of the steps left


def plan_steps(minutes: float, family, net, cfg, streams: dict, rt: runtime.Runtime, steps_per_epoch: int,
               make_optimizer) -> tuple[int, float]:
    """(optimiser steps that fit ``minutes`` of training and validation on this machine, at least 1; the seconds
    the measurement itself took, which count against the budget)."""
    started = time.perf_counter()
    with _saved_random_state():
        probe = copy.deepcopy(net)
        optimizer = make_optimizer(probe)
        step_seconds = _step_seconds(family, probe, optimizer, cfg, streams, rt, min(PROBE_SECONDS, minutes * 3))
        # With weight averaging from fraction f of the run, the last (1 - f) of the epochs validate twice.
        validations = 2 - cfg.optim.average_from if cfg.optim.average_from else 1
        valid_seconds = validations * _valid_seconds(family, net, cfg, streams) + _checkpoint_seconds(probe, optimizer)
    step_seconds, valid_seconds = (v / rt.world_size for v in runtime.all_reduce_sum(rt, [step_seconds, valid_seconds]))
    left = minutes * 60 - (time.perf_counter() - started)
    steps = steps_that_fit(left, step_seconds, valid_seconds, steps_per_epoch)
    log.info("budget %.1f min: %.4f s/step, %.1f s per validation and checkpoint -> %d steps (%.2f epochs)", minutes,
             step_seconds, valid_seconds, steps, steps / steps_per_epoch)
    return steps, time.perf_counter() - started


def steps_that_fit(seconds: float, step_seconds: float, valid_seconds: float, steps_per_epoch: int) -> int:
    """The largest step count whose training plus validations (one per started epoch) fits ``seconds`` (at
    least 1). The cost grows with the steps, so a binary search finds it."""

    def cost(steps: int) -> float:
        return steps * step_seconds + math.ceil(steps / steps_per_epoch) * valid_seconds

    low, high = 1, max(1, int(seconds / step_seconds))
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(middle) <= seconds else (low, middle - 1)
    return low


def replanned_steps(budget_seconds: float, elapsed_seconds: float, step: int, planned: int, step_seconds: float,
                    valid_seconds: float, steps_per_epoch: int) -> int | None:
    """After the validation at ``step`` (an epoch's end), with ``elapsed_seconds`` of the budget spent: the total
    steps that fit what is left at the measured costs, or None when the plan of ``planned`` steps still fits
    (within the tolerance). ``step`` itself when not even one more step and its validation fit: the run ends."""
    left = budget_seconds - elapsed_seconds
    room = left >= step_seconds + valid_seconds
    fits = steps_that_fit(left, step_seconds, valid_seconds, steps_per_epoch) if room else 0
    total = step + fits
    if abs(total - planned) <= REPLAN_TOLERANCE * max(planned - step, 1):
        return None
    return total


def _step_seconds(family, probe, optimizer, cfg, streams, rt, probe_seconds: float) -> float:
    """The median time of the timed steps: a burst of other work during the probe (the page cache writing back a
    large file another program saved, a process finishing) slows some of them, which moves a mean and not the
    median. (A mean-based probe once measured 0.24 s/step where its run took 0.11: half the hour's steps.)"""
    probe.train()
    batches = family.train_batches(probe, streams["train"], cfg.data, 1, cfg.train.seed, rt)
    started, durations, timed, n = time.perf_counter(), [], 0.0, 0
    for x, y in batches:
        step_started = time.perf_counter()
        optimizer_step(batches, probe, probe, x, y, optimizer, cfg.optim.clip).item()  # .item() waits for the device
        n += 1
        if n > WARMUP_STEPS:
            durations.append(time.perf_counter() - step_started)
            timed += durations[-1]
            if len(durations) >= PROBE_STEPS or timed >= probe_seconds:
                break
    if not durations:  # an epoch too short to warm up: time all of it
        return (time.perf_counter() - started) / max(1, n)
    return statistics.median(durations)


def _valid_seconds(family, net, cfg, streams) -> float:
    started = time.perf_counter()
    family.token_nlls(net, *streams["valid"], **family.score_settings(cfg.data))
    return time.perf_counter() - started


def _checkpoint_seconds(model, optimizer) -> float:
    """An epoch's end also writes last.pt and, when it improved, best.pt: time writing both to memory."""
    started = time.perf_counter()
    for state in ({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, {"model": model.state_dict()}):
        torch.save(state, io.BytesIO())
    return time.perf_counter() - started


class _saved_random_state:
    """Every random generator the run uses, restored after the probe."""

    def __enter__(self):
        self.states = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                       random.getstate(), np.random.get_state())

    def __exit__(self, *exc):
        cpu, cuda, py, np_state = self.states
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        np.random.set_state(np_state)
        return False

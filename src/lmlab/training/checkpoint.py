"""Resume state: weights, optimiser, schedule, progress and every random generator, in one atomic file that
``torch.load(weights_only=True)`` can read (RNG states are stored as tensors, ints and tuples, never pickled
objects), so a resumed run draws the same numbers as an uninterrupted one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.training import rundir


def rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), Python and NumPy generators, as weights-only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, weights: dict[str, torch.Tensor], optimizer, scheduler, progress: dict[str, Any]) -> None:
    """``weights``: what training changes (all weights, or only the trainable ones of a LoRA model)."""
    rundir.save_checkpoint(path, {"model": weights, "optimizer": optimizer.state_dict(),
                                  "schedule": scheduler.state_dict(), "progress": progress, "rng": rng_state()})


def load(path: Path, optimizer, scheduler) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore optimiser, schedule and RNGs; return the weights (for the caller's model) and the progress."""
    ckpt = rundir.load_checkpoint(path)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["schedule"])
    set_rng_state(ckpt["rng"])
    return ckpt["model"], ckpt["progress"]

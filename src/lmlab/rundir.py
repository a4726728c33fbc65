"""A run directory is the unit of results: config, per-epoch metrics, final numbers, plots, checkpoints.

Every later step (evaluation, sampling, the report) reads runs from disk through this module, so steps
resume and compose. Checkpoints are written atomically, so an interruption never leaves a torn file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lmlab.errors import LmlabError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
FINAL = "final.json"
CURVES = "curves.png"
VOCAB = "vocab.txt"
LAST = "last.pt"  # everything needed to resume after the last finished epoch
BEST = "best.pt"  # the weights with the lowest validation loss so far


def write_json(path: Path, obj: Any) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise LmlabError(f"{path} not found: is this a finished lmlab run directory?") from e
    except json.JSONDecodeError as e:
        raise LmlabError(f"{path} is not valid JSON ({e}): the file is corrupt; rerun the step") from e


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = Path(f"{path}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict[str, Any]:
    if not Path(path).is_file():
        raise LmlabError(f"checkpoint {path} not found: train the run first (lmlab train … --out {Path(path).parent})")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise LmlabError(
            f"checkpoint {path} is unreadable ({type(e).__name__}): it is corrupt or not an lmlab checkpoint; "
            "retrain, or restore it from a copy"
        ) from e

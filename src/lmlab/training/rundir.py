"""A run directory is the unit of results: config, metrics, final numbers, plots, checkpoints.

Every later step (evaluation, sampling, the report) reads runs from disk through this module, so steps
resume and compose. Files are written atomically (a temporary file renamed into place), so an interruption
or a full disk never leaves a torn file behind; checkpoints are loaded with ``weights_only=True``, so a
checkpoint can hold tensors, numbers and strings but never code that runs when it is loaded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from lmlab.errors import LmlabError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
FINAL = "final.json"
CURVES = "curves.png"
VOCAB = "vocab.txt"
LAST = "last.pt"  # everything needed to resume after the last finished epoch or evaluation
BEST = "best.pt"  # the weights with the lowest validation loss so far
TENSORBOARD = "tensorboard"


LOW_SPACE = 64 << 20  # a write that fails with less free space than this failed for want of space


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temporary file beside ``path``, then rename it into place. If writing fails, the partial
    file is removed; a full disk is reported as ``OSError(ENOSPC)`` whatever type carried it (Python raises
    OSError, torch.save a RuntimeError such as "file write failed" that does not say why)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and not (isinstance(e, OSError) and e.errno == errno.ENOSPC) and _disk_full(e, path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from e
        raise


def _disk_full(error: BaseException, path: Path) -> bool:
    cause = error
    while cause is not None:
        if getattr(cause, "errno", None) == errno.ENOSPC or "No space left" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, (OSError, RuntimeError)):
        try:
            return shutil.disk_usage(path.parent).free < LOW_SPACE
        except OSError:
            return False
    return False


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise LmlabError(f"{path} not found: is this a finished lmlab run directory?") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmlabError(f"{path} is not valid JSON ({type(e).__name__}): the file is corrupt; rerun the step") from e


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    _atomic(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, map_location="cpu") -> dict[str, Any]:
    if not Path(path).is_file():
        raise LmlabError(f"checkpoint {path} not found: train the run first (lmlab train … --out {Path(path).parent})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a truncated, foreign or code-carrying file
        reason = "it holds objects other than tensors and numbers, which lmlab never loads" if (
            "weights_only" in str(e) or "Unsupported global" in str(e)) else "it is corrupt or not an lmlab checkpoint"
        raise LmlabError(f"checkpoint {path} is unreadable ({type(e).__name__}): {reason}; retrain, or restore it "
                         "from a copy") from e


def final_digest(run_dir: Path) -> str | None:
    """A finished run as the results made from it name it: the digest of its final.json, which every new training
    rewrites (None while it has none). A result that records it can tell whether it was made from this training."""
    final = Path(run_dir) / FINAL
    return hashlib.sha256(final.read_bytes()).hexdigest()[:16] if final.is_file() else None


def remove(path: Path) -> None:
    Path(path).unlink(missing_ok=True)

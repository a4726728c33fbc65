"""One metrics logger for every recipe: a JSON line per row in ``metrics.jsonl`` and, when asked and installed,
the same numbers as TensorBoard scalars (``tensorboard/``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from lmlab.training import rundir

log = logging.getLogger("lmlab")


class MetricsLogger:
    def __init__(self, out: Path, tensorboard: bool = False, enabled: bool = True):
        self.path = Path(out) / rundir.METRICS
        self.enabled = enabled  # False on every process but the main one
        self.writer = _tensorboard(Path(out)) if tensorboard and enabled else None

    def log(self, row: dict[str, Any], step: int, prefix: str = "") -> None:
        if not self.enabled:
            return
        rundir.append_jsonl(self.path, row)
        if self.writer:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self.writer.add_scalar(f"{prefix}{key}", value, step)

    def scalar(self, name: str, value: float, step: int) -> None:
        """A TensorBoard-only number (e.g. the loss every few steps), not a row of metrics.jsonl."""
        if self.writer:
            self.writer.add_scalar(name, value, step)

    def rows(self) -> list[dict[str, Any]]:
        return rundir.read_jsonl(self.path)

    def keep(self, keep: Callable[[dict], bool]) -> None:
        """After a resume: drop the rows logged after the checkpoint, which the run will log again."""
        if self.enabled and self.path.is_file():
            rundir.write_jsonl(self.path, [r for r in self.rows() if keep(r)])

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("log.tensorboard=true but tensorboard is not installed (pip install tensorboard): "
                    "logging to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(out / rundir.TENSORBOARD))

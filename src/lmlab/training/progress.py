"""Best-checkpoint and early-stopping bookkeeping, shared by every training loop."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class Best:
    """The lowest validation loss so far, where it was reached, and how many evaluations since."""

    patience: int = 0  # evaluations without improvement before stopping (0 = never)
    loss: float = math.inf
    at: int = -1  # the epoch or step of the best evaluation
    bad: int = 0

    def update(self, loss: float, at: int) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if loss < self.loss:
            self.loss, self.at, self.bad = loss, at, 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.bad >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.loss, self.at, self.bad = state["loss"], state["at"], state["bad"]


def diverged(loss: float, start: float | None, factor: float = 4.0) -> bool:
    """A loss that is not finite, or far above where training started (``factor`` times the first loss), means
    the run has diverged: an exploding loss is caught before it reaches inf."""
    return not math.isfinite(loss) or (start is not None and loss > factor * max(start, 1e-9))

"""Variational ("locked") dropout: one mask per sequence, shared by every time step (Gal & Ghahramani 2016).

A fresh mask at every step would inject noise the recurrence has to fight at every step; sharing it across
time drops the same units for the whole window, which regularises recurrent LMs far better.
"""

from __future__ import annotations

import torch
from torch import nn


class LockedDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (T, B, D); the mask is drawn for (1, B, D) and broadcast over T."""
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask

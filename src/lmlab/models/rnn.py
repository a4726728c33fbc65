"""Elman RNN layer from tensor operations: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).

Parameters are named as in a one-layer ``torch.nn.RNN`` so state dicts move between the two unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ElmanLayer(nn.Module):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(hidden_size))
        bound = 1 / math.sqrt(hidden_size)  # torch.nn.RNN's default initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(1, batch_size, self.hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, B, input); h: (1, B, hidden). Returns outputs (T, B, hidden) and the last state."""
        steps, batch, _ = x.shape
        # The input projection of every step is one large GEMM; only h W_hh^T must wait for the previous step.
        xw = torch.addmm(self.bias_ih_l0 + self.bias_hh_l0, x.reshape(steps * batch, -1), self.weight_ih_l0.t())
        xw = xw.view(steps, batch, self.hidden_size)
        w_hh_t = self.weight_hh_l0.t()
        h_t = h[0]
        outputs = []
        for t in range(steps):
            h_t = torch.tanh(torch.addmm(xw[t], h_t, w_hh_t))
            outputs.append(h_t)
        return torch.stack(outputs), h_t.unsqueeze(0)

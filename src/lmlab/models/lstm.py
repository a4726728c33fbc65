"""LSTM layer from tensor operations (Hochreiter & Schmidhuber 1997, with forget gate; no peepholes).

    i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)      # gate order as torch.nn.LSTM
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

Parameters are named as in a one-layer ``torch.nn.LSTM`` so state dicts move between the two unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LSTMLayer(nn.Module):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        bound = 1 / math.sqrt(hidden_size)  # torch.nn.LSTM's default initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = like.new_zeros(1, batch_size, self.hidden_size)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """x: (T, B, input); state: (h, c), each (1, B, hidden). Returns outputs (T, B, hidden), (h, c)."""
        steps, batch, _ = x.shape
        hidden = self.hidden_size
        # All input projections in one GEMM; the recurrence then needs one (B x H) @ (H x 4H) per step.
        xw = torch.addmm(self.bias_ih_l0 + self.bias_hh_l0, x.reshape(steps * batch, -1), self.weight_ih_l0.t())
        xw = xw.view(steps, batch, 4 * hidden)
        w_hh_t = self.weight_hh_l0.t()
        h_t, c_t = state[0][0], state[1][0]
        outputs = []
        for t in range(steps):
            gates = torch.addmm(xw[t], h_t, w_hh_t)
            # i, f and o share one sigmoid call: fewer kernel launches and autograd nodes per step.
            ifo = torch.sigmoid(torch.cat([gates[:, : 2 * hidden], gates[:, 3 * hidden :]], dim=1))
            g = torch.tanh(gates[:, 2 * hidden : 3 * hidden])
            i, f, o = ifo[:, :hidden], ifo[:, hidden : 2 * hidden], ifo[:, 2 * hidden :]
            c_t = torch.addcmul(f * c_t, i, g)
            h_t = o * torch.tanh(c_t)
            outputs.append(h_t)
        return torch.stack(outputs), (h_t.unsqueeze(0), c_t.unsqueeze(0))

"""Elman RNN layer from tensor operations: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).

Parameters are named as in a one-layer ``torch.nn.RNN`` so state dicts move between the two unchanged.
"""

from __future__ import annotations

import torch

from lmlab.models.recurrent_layer import RecurrentLayer


class ElmanLayer(RecurrentLayer):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, gates=1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, B, input); h: (1, B, hidden). Returns outputs (T, B, hidden) and the last state."""
        # The input projection of every step is one large GEMM; only h W_hh^T must wait for the previous step.
        xw = self.input_projections(x, self.bias_ih_l0 + self.bias_hh_l0)
        w_hh_t = self.recurrent_weight().t()
        h_t = h[0]
        outputs = []
        for t in range(x.size(0)):
            h_t = torch.tanh(torch.addmm(xw[t], h_t, w_hh_t))
            outputs.append(h_t)
        return torch.stack(outputs), h_t.unsqueeze(0)

"""GRU layer from tensor operations (Cho et al. 2014), in ``torch.nn.GRU``'s formulation:

    r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
    z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))      # the reset gate scales the recurrent term only
    h' = (1 - z) * n + z * h

Parameters are named as in a one-layer ``torch.nn.GRU`` (gate order r, z, n) so state dicts move between the
two unchanged. Like the Elman layer, the input projections of all steps are one GEMM; the time loop is left to
autograd (three gates, one recurrent GEMM per step).
"""

from __future__ import annotations

import torch

from lmlab.models.recurrent_layer import RecurrentLayer


class GRULayer(RecurrentLayer):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, gates=3)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, B, input); h: (1, B, hidden). Returns outputs (T, B, hidden) and the last state."""
        hidden = self.hidden_size
        xw = self.input_projections(x, self.bias_ih_l0)
        w_hh_t = self.recurrent_weight().t()
        h_t = h[0]
        outputs = []
        for t in range(x.size(0)):
            hw = torch.addmm(self.bias_hh_l0, h_t, w_hh_t)
            rz = torch.sigmoid(xw[t, :, : 2 * hidden] + hw[:, : 2 * hidden])
            r, z = rz[:, :hidden], rz[:, hidden:]
            n = torch.tanh(xw[t, :, 2 * hidden :] + r * hw[:, 2 * hidden :])
            h_t = n + z * (h_t - n)  # = (1 - z) n + z h, one fewer operation
            outputs.append(h_t)
        return torch.stack(outputs), h_t.unsqueeze(0)

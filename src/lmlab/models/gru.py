"""GRU layer from tensor operations (Cho et al. 2014), in ``torch.nn.GRU``'s formulation:

    r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
    z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))      # the reset gate scales the recurrent term only
    h' = (1 - z) * n + z * h

Parameters are named as in a one-layer ``torch.nn.GRU`` (gate order r, z, n) so state dicts move between the
two unchanged.

Speed: as in the LSTM layer, the input projections of all steps are one GEMM and the recurrence is a custom
autograd function with a hand-written backward pass (written out below): autograd would record about ten nodes
per time step; written out, the backward loop is one multiplication and one GEMM per step, and the recurrent
weight's gradient one GEMM over all steps. The tests check it against ``torch.nn.GRU`` and against finite
differences.
"""

from __future__ import annotations

import torch

from lmlab.models.recurrent_layer import RecurrentLayer, per_step_weight


class GRURecurrence(torch.autograd.Function):
    """The time loop of one layer, given the input projections ``xw`` (T, B, 3H) with ``b_ih`` included; ``b_hh``
    is an input of its own because the reset gate scales its n part."""

    @staticmethod
    def forward(ctx, xw, h0, w_hh, b_hh):
        steps, batch, three_h = xw.shape
        hidden = three_h // 3
        hs = xw.new_empty(steps + 1, batch, hidden)  # h_0 .. h_T
        hw = xw.new_empty(steps, batch, three_h)  # h_{t-1} W_hh^T + b_hh, kept for the backward pass
        rz = xw.new_empty(steps, batch, 2 * hidden)  # activated r, z
        n = xw.new_empty(steps, batch, hidden)
        hs[0] = h0
        w_hh_t = per_step_weight(w_hh)
        for t in range(steps):
            torch.addmm(b_hh, hs[t], w_hh_t, out=hw[t])
            torch.add(xw[t, :, : 2 * hidden], hw[t, :, : 2 * hidden], out=rz[t]).sigmoid_()
            torch.addcmul(xw[t, :, 2 * hidden :], rz[t, :, :hidden], hw[t, :, 2 * hidden :], out=n[t]).tanh_()
            torch.addcmul(n[t], rz[t, :, hidden:], hs[t] - n[t], out=hs[t + 1])  # = (1 - z) n + z h
        ctx.save_for_backward(hs, hw, rz, n, w_hh)
        return hs[1:], hs[steps]

    @staticmethod
    def backward(ctx, d_out, d_h_last):
        hs, hw, rz, n, w_hh = ctx.saved_tensors
        steps, batch, three_h = hw.shape
        hidden = three_h // 3
        r, z, hn = rz[..., :hidden], rz[..., hidden:], hw[..., 2 * hidden :]
        # Per unit of dh_t (the gradient reaching h_t), everything but dh_t is known before the loop:
        #   d(pre n) = dh (1 - z)(1 - n^2) =: dh a        d(pre z) = dh (h_{t-1} - n) z (1 - z)
        #   d(pre r) = dh a hn r (1 - r)                   d(hn)    = dh a r        (hn = h_{t-1} W_hn^T + b_hn)
        #   dh_{t-1} = dh z + [d(pre r), d(pre z), d(hn)] @ W_hh
        a = (1 - z) * (1 - n * n)
        per_dh = torch.cat([a * hn * r * (1 - r), (hs[:-1] - n) * z * (1 - z), a * r, a], dim=2)
        d_all = torch.empty_like(per_dh)  # [d(pre r), d(pre z), d(hn), d(pre n)] for every step
        per_dh4, d_all4 = per_dh.view(steps, batch, 4, hidden), d_all.view(steps, batch, 4, hidden)
        dh = d_h_last.clone() if d_h_last is not None else hs.new_zeros(batch, hidden)
        for t in reversed(range(steps)):
            if d_out is not None:
                dh += d_out[t]
            torch.mul(per_dh4[t], dh.unsqueeze(1), out=d_all4[t])
            dh = torch.addmm(dh * z[t], d_all[t, :, :three_h], w_hh)
        d_hw = d_all.view(steps * batch, 4 * hidden)[:, :three_h]
        d_w_hh = d_hw.t() @ hs[:-1].reshape(steps * batch, hidden)
        d_xw = torch.cat([d_all[..., : 2 * hidden], d_all[..., three_h:]], dim=2)
        return d_xw, dh, d_w_hh, d_hw.sum(0)


class GRULayer(RecurrentLayer):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, gates=3)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, B, input); h: (1, B, hidden). Returns outputs (T, B, hidden) and the last state."""
        xw = self.input_projections(x, self.bias_ih_l0)
        outputs, h_last = GRURecurrence.apply(xw, h[0].to(xw.dtype), self.recurrent_weight(xw),
                                             self.bias_hh_l0.to(xw.dtype))
        return outputs, h_last.unsqueeze(0)

"""Elman RNN layer from tensor operations: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).

Parameters are named as in a one-layer ``torch.nn.RNN`` so state dicts move between the two unchanged.

Speed: as in the LSTM layer, the input projections of all steps are one GEMM and the recurrence is a custom
autograd function with a hand-written backward pass: autograd would record two nodes per time step and form
the recurrent weight's gradient as one small GEMM per step; written out, the backward loop is one
multiplication and one GEMM per step, and the weight gradient one GEMM over all steps. The tests check it
against ``torch.nn.RNN`` and against finite differences.
"""

from __future__ import annotations

import torch

from lmlab.models.recurrent_layer import RecurrentLayer, per_step_weight


class ElmanRecurrence(torch.autograd.Function):
    """The time loop of one layer, given the input projections ``xw`` (T, B, H) with both biases included."""

    @staticmethod
    def forward(ctx, xw, h0, w_hh):
        steps = xw.size(0)
        hs = xw.new_empty(steps + 1, *h0.shape)  # h_0 .. h_T
        hs[0] = h0
        w_hh_t = per_step_weight(w_hh)
        for t in range(steps):
            torch.addmm(xw[t], hs[t], w_hh_t, out=hs[t + 1]).tanh_()
        ctx.save_for_backward(hs, w_hh)
        return hs[1:], hs[steps]

    @staticmethod
    def backward(ctx, d_out, d_h_last):
        hs, w_hh = ctx.saved_tensors
        steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        # dL/d(pre-activation)_t = dh_t * (1 - h_t^2), and dh_{t-1} = that @ W_hh: the factor is known for every
        # step before the loop starts.
        slope = 1 - hs[1:] * hs[1:]
        d_pre = torch.empty_like(slope)
        dh = d_h_last.clone() if d_h_last is not None else hs.new_zeros(batch, hidden)
        if d_out is not None:
            dh += d_out[steps - 1]
        for t in reversed(range(steps)):
            torch.mul(dh, slope[t], out=d_pre[t])
            # the output gradient of step t-1 enters as the matmul's addend
            dh = d_pre[t] @ w_hh if t == 0 or d_out is None else torch.addmm(d_out[t - 1], d_pre[t], w_hh)
        d_w_hh = d_pre.view(steps * batch, hidden).t() @ hs[:-1].reshape(steps * batch, hidden)
        return d_pre, dh, d_w_hh


class ElmanLayer(RecurrentLayer):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, gates=1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, B, input); h: (1, B, hidden). Returns outputs (T, B, hidden) and the last state."""
        # The input projection of every step is one large GEMM; only h W_hh^T must wait for the previous step.
        xw = self.input_projections(x, self.bias_ih_l0 + self.bias_hh_l0)
        outputs, h_last = self.recurrence(xw, h[0].to(xw.dtype), self.recurrent_weight(xw))
        return outputs, h_last.unsqueeze(0)

    def recurrence(self, xw: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor):
        return ElmanRecurrence.apply(xw, h0, w_hh)


class NormalizedElmanRecurrence(torch.autograd.Function):
    """The time loop of a layer-normalised Elman layer: h_t = tanh(LN(xw_t + h_{t-1} W_hh^T)), LN over the
    hidden units with a gain and a shift. Forward and backward use aten's fused layer-norm kernels per step;
    the normalisation statistics are recomputed for all steps at once in the backward rather than kept."""

    @staticmethod
    def forward(ctx, xw, h0, w_hh, gain, shift, eps):
        steps, hidden = xw.size(0), h0.size(-1)
        hs = xw.new_empty(steps + 1, *h0.shape)  # h_0 .. h_T
        hs[0] = h0
        pre = torch.empty_like(xw)  # the un-normalised sums, which the backward normalises again
        w_hh_t = per_step_weight(w_hh)
        for t in range(steps):
            torch.addmm(xw[t], hs[t], w_hh_t, out=pre[t])
            torch.tanh(torch.native_layer_norm(pre[t], (hidden,), gain, shift, eps)[0], out=hs[t + 1])
        ctx.save_for_backward(hs, pre, w_hh, gain)
        ctx.eps = eps
        return hs[1:], hs[steps]

    @staticmethod
    def backward(ctx, d_out, d_h_last):
        hs, pre, w_hh, gain = ctx.saved_tensors
        steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        var, mean = torch.var_mean(pre, dim=-1, keepdim=True, correction=0)
        rstd = (var + ctx.eps).rsqrt()
        slope = 1 - hs[1:] * hs[1:]
        d_norm = torch.empty_like(slope)  # dL/d(LN output), for the gain's and shift's gradients
        d_pre = torch.empty_like(slope)
        dh = d_h_last.clone() if d_h_last is not None else hs.new_zeros(batch, hidden)
        if d_out is not None:
            dh += d_out[steps - 1]
        no_weight_grads = (True, False, False)
        for t in reversed(range(steps)):
            torch.mul(dh, slope[t], out=d_norm[t])
            d_pre[t] = torch.ops.aten.native_layer_norm_backward(
                d_norm[t], pre[t], (hidden,), mean[t], rstd[t], gain, None, no_weight_grads)[0]
            dh = d_pre[t] @ w_hh if t == 0 or d_out is None else torch.addmm(d_out[t - 1], d_pre[t], w_hh)
        d_w_hh = d_pre.view(steps * batch, hidden).t() @ hs[:-1].reshape(steps * batch, hidden)
        normalized = (pre - mean) * rstd
        d_gain = (d_norm * normalized).sum(dim=(0, 1))
        d_shift = d_norm.sum(dim=(0, 1))
        return d_pre, dh, d_w_hh, d_gain, d_shift, None


class NormalizedElmanLayer(ElmanLayer):
    """An Elman layer with layer normalisation of the summed inputs before the tanh (Ba, Kiros & Hinton 2016,
    "Layer Normalization", section 6.2's normalised RNN): the pre-activation keeps zero mean and unit variance
    per step whatever the recurrent weights' scale, which is what lets a tanh recurrence take larger learning
    rates without saturating. ``torch.nn.RNN`` has no such cell, so the tests check it against the same loop
    built from ``torch.nn.functional.layer_norm`` under autograd, and against finite differences."""

    eps = 1e-5

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.norm_weight = torch.nn.Parameter(torch.ones(hidden_size))
        self.norm_bias = torch.nn.Parameter(torch.zeros(hidden_size))

    def recurrence(self, xw: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor):
        return NormalizedElmanRecurrence.apply(xw, h0, w_hh, self.norm_weight.to(xw.dtype),
                                               self.norm_bias.to(xw.dtype), self.eps)

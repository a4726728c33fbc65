"""LSTM layer from tensor operations (Hochreiter & Schmidhuber 1997, with forget gate; no peepholes).

    i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)      # gate order as torch.nn.LSTM
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

Parameters are named as in a one-layer ``torch.nn.LSTM`` so state dicts move between the two unchanged.

Speed: the input projections of all steps are one GEMM (autograd handles it). The recurrence is a custom
autograd function with a hand-written backward pass (back-propagation through time, written out below), so
autograd records one node per window instead of about ten per time step, and the weight gradient of the
recurrence is one GEMM over all steps instead of one per step. On CPU the element-wise part of each step
(the gates' activations, c_t, h_t forward; the gates' gradients and dc backward) runs as one compiled C++ pass
(``kernels/lstm_cell.cpp``) instead of about eight tensor operations, whose dispatch and passes over memory
cost more than their arithmetic at this size; elsewhere, or with ``model.compiled_cell=false``, the tensor
operations below run. The tests check both against ``torch.nn.LSTM``, against each other and against finite
differences.
"""

from __future__ import annotations

import torch

from lmlab.models import kernels
from lmlab.models.recurrent_layer import RecurrentLayer, per_step_weight


class LSTMRecurrence(torch.autograd.Function):
    """The time loop of one layer, given the input projections ``xw`` (T, B, 4H) with biases included.
    ``cell``: the compiled cell (:func:`lmlab.models.kernels.lstm_cell`), or None for the tensor operations."""

    @staticmethod
    def forward(ctx, xw, h0, c0, w_hh, cell=None):
        steps, batch, four_h = xw.shape
        hidden = four_h // 4
        hs = xw.new_empty(steps + 1, batch, hidden)  # h_0 .. h_T
        cs = xw.new_empty(steps + 1, batch, hidden)  # c_0 .. c_T
        tanh_cs = xw.new_empty(steps, batch, hidden)  # tanh(c_1) .. tanh(c_T), kept for the backward pass
        acts = xw.new_empty(steps, batch, four_h)  # activated gates, kept for the backward pass
        hs[0], cs[0] = h0, c0
        w_hh_t = per_step_weight(w_hh)
        step = cell.forward_step if cell is not None else _tensor_op_forward_step
        for t in range(steps):
            torch.addmm(xw[t], hs[t], w_hh_t, out=acts[t])
            step(acts[t], cs[t], cs[t + 1], tanh_cs[t], hs[t + 1])
        ctx.save_for_backward(hs, cs, tanh_cs, acts, w_hh)
        ctx.cell = cell
        return hs[1:], hs[steps], cs[steps]

    @staticmethod
    def backward(ctx, d_out, d_h_last, d_c_last):
        hs, cs, tanh_c, acts, w_hh = ctx.saved_tensors
        steps, batch, four_h = acts.shape
        hidden = four_h // 4
        d_pre = torch.empty_like(acts)
        # Contiguous copies: the compiled cell reads dh and updates dc in place.
        dh = d_h_last.clone(memory_format=torch.contiguous_format) if d_h_last is not None else hs.new_zeros(batch, hidden)
        dc = d_c_last.clone(memory_format=torch.contiguous_format) if d_c_last is not None else hs.new_zeros(batch, hidden)
        if d_out is not None:
            dh += d_out[steps - 1]
        if ctx.cell is not None:
            for t in reversed(range(steps)):
                ctx.cell.backward_step(acts[t], cs[t], tanh_c[t], dh, dc, d_pre[t])  # d_pre[t], and dc -> dc_{t-1}
                dh = _state_gradient(d_pre, w_hh, d_out, t)
        else:
            dh, dc = _tensor_op_backward_loop(acts, cs, tanh_c, w_hh, d_out, d_pre, dh, dc)
        d_w_hh = d_pre.view(steps * batch, four_h).t() @ hs[:-1].reshape(steps * batch, hidden)
        return d_pre, dh, dc, d_w_hh, None


def _tensor_op_forward_step(gates, c_prev, c, tanh_c, h):
    """One step of the cell in tensor operations: the gates' pre-activations become their activations in place;
    c_t, tanh(c_t) and h_t are written to c, tanh_c and h (what the compiled ``forward_step`` does in one pass)."""
    i, f, g, o = gates.chunk(4, 1)
    # tanh(a) = 2 sigmoid(2a) - 1: on CPU one sigmoid pass over all four gates and three cheap passes over g
    # cost less than sigmoid and tanh passes over the gates' column slices (tanh is about four times slower per
    # element than sigmoid at this size; the preset's forward loop took 5.8 instead of 6.2 ms per window,
    # 2 threads, with tanh(c) kept for the backward pass).
    g.mul_(2)
    gates.sigmoid_()
    g.mul_(2).sub_(1)
    torch.addcmul(f * c_prev, i, g, out=c)
    torch.mul(o, torch.tanh(c, out=tanh_c), out=h)


def _state_gradient(d_pre, w_hh, d_out, t):
    """dh_{t-1}: through the recurrence (d_pre_t W_hh), plus the output gradient of step t-1 as the matmul's addend."""
    return d_pre[t] @ w_hh if t == 0 or d_out is None else torch.addmm(d_out[t - 1], d_pre[t], w_hh)


def _tensor_op_backward_loop(acts, cs, tanh_c, w_hh, d_out, d_pre, dh, dc):
    """The backward time loop in tensor operations: fills d_pre and returns dh_0 and dc_0."""
    steps, _, four_h = acts.shape
    hidden = four_h // 4
    i, f, g, o = acts.chunk(4, 2)
    # Everything that does not depend on the gradients flowing back is computed for all steps at once,
    # so the sequential loop below is five small operations per step:
    #   d(pre i, f, g) = dc_t * [g i(1-i), c_{t-1} f(1-f), i (1-g^2)],  d(pre o) = dh_t * tanh(c_t) o(1-o)
    #   dc_t = dc_{t+1} f_{t+1} + dh_t o_t (1 - tanh^2 c_t),           dh_{t-1} = d_pre_t W_hh
    via_c = torch.cat([g * i * (1 - i), cs[:-1] * f * (1 - f), i * (1 - g * g)], dim=2).view(steps, -1, 3, hidden)
    via_h = tanh_c * o * (1 - o)
    c_from_h = o * (1 - tanh_c * tanh_c)
    d_pre_c = d_pre[:, :, : 3 * hidden].view(steps, -1, 3, hidden)
    d_pre_h = d_pre[:, :, 3 * hidden :]
    for t in reversed(range(steps)):
        dc.addcmul_(dh, c_from_h[t])
        torch.mul(via_c[t], dc.unsqueeze(1), out=d_pre_c[t])
        torch.mul(dh, via_h[t], out=d_pre_h[t])
        dc = dc * f[t]
        dh = _state_gradient(d_pre, w_hh, d_out, t)
    return dh, dc


class LSTMLayer(RecurrentLayer):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, gates=4)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = like.new_zeros(1, batch_size, self.hidden_size)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """x: (T, B, input); state: (h, c), each (1, B, hidden). Returns outputs (T, B, hidden), (h, c)."""
        # All input projections in one GEMM; the recurrence then needs one (B x H) @ (H x 4H) per step.
        xw = self.input_projections(x, self.bias_ih_l0 + self.bias_hh_l0)
        outputs, h, c = LSTMRecurrence.apply(xw, state[0][0].to(xw.dtype), state[1][0].to(xw.dtype),
                                               self.recurrent_weight(xw), self.compiled_kernel(xw))
        return outputs, (h.unsqueeze(0), c.unsqueeze(0))

    def compiled_kernel(self, like: torch.Tensor):
        """The compiled cell for tensors like ``like`` where it applies (CPU, float32/float64, model.compiled_cell),
        else None."""
        if not self.compiled_cell or like.device.type != "cpu" or like.dtype not in (torch.float32, torch.float64):
            return None
        return kernels.lstm_cell()

"""What every from-scratch recurrent layer shares: ``torch.nn.RNN``/``GRU``/``LSTM``'s parameters (same
names, shapes and initialisation, so state dicts move between a layer and its twin unchanged), a zero
initial state and DropConnect on the recurrent weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmlab.models.dropout import dropout


def per_step_weight(w_hh: torch.Tensor) -> torch.Tensor:
    """W_hh^T as the forward loops multiply every step's state by it: a contiguous copy, made once per window.
    MKL's small per-step GEMM reads it faster than the transposed view (2 threads, in isolation: LSTM
    20 x 256 @ 256 x 1,024 78-109 -> 60-74 us, GRU 20 x 272 @ 272 x 816 63-66 -> 42-43 us, RNN 20 x 320 @
    320 x 320 35-45 -> 22-30 us), and the copy (0.08-0.26 ms) serves the window's 35 steps."""
    return w_hh.t().contiguous()


class RecurrentLayer(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, gates: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_drop = 0.0  # set by RecurrentLM
        self.compiled_cell = True  # set by RecurrentLM: use the layer's compiled CPU cell where it has one (LSTM)
        self.weight_ih_l0 = nn.Parameter(torch.empty(gates * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(gates * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(gates * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(gates * hidden_size))
        bound = 1 / math.sqrt(hidden_size)  # torch.nn's default initialisation for recurrent layers
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(1, batch_size, self.hidden_size)

    def input_projections(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x W_ih^T + bias for every step at once: one large GEMM, (T, B, gates * hidden)."""
        steps, batch, _ = x.shape
        return torch.addmm(bias, x.reshape(steps * batch, -1), self.weight_ih_l0.t()).view(steps, batch, -1)

    def recurrent_weight(self, like: torch.Tensor) -> torch.Tensor:
        """W_hh, with DropConnect while training (Wan et al. 2013, as AWD-LSTM uses it, Merity et al. 2018): one
        mask per call, so per BPTT window, shared by every step and column. Dropping recurrent *weights* rather
        than activations regularises the recurrence without disturbing the fast per-step kernels. The mask is
        :func:`lmlab.models.dropout.dropout`'s (0.7 ms for the LSTM preset's 1,024 x 256 W_hh against 2.5 ms
        for ``F.dropout``'s Bernoulli draws, 2 threads), the one the ``torch.nn`` twins draw too.

        In ``like``'s dtype: under autocast the input projections come out in bf16/fp16, and the hand-written
        backward passes multiply their gradients by W_hh outside autocast, so the recurrence must run in one
        dtype throughout (as cuDNN's does); the cast's own backward returns W_hh's gradient in fp32."""
        return dropout(self.weight_hh_l0, self.weight_drop, self.training).to(like.dtype)

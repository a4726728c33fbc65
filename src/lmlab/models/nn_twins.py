"""``torch.nn`` equivalents of the from-scratch layers, with identical parameter names and call signatures."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from lmlab.models.dropout import dropout


class _DropConnect:
    """AWD-LSTM's DropConnect on W_hh for the ``torch.nn`` layers, as its WeightDrop wraps ``nn.LSTM``: while
    training, the fused kernel runs with a masked copy of W_hh passed in place of the parameter
    (``functional_call``), one mask per call as in the scratch layers, so the twins stay identical with it on."""

    weight_drop = 0.0  # set by RecurrentLM
    _masking = False   # inside functional_call, which calls this forward again

    def forward(self, x, state):
        if not self.training or not self.weight_drop or self._masking:
            return super().forward(x, state)
        masked = dropout(self.weight_hh_l0, self.weight_drop, True)
        self._masking = True
        try:
            return functional_call(self, {"weight_hh_l0": masked}, (x, state))
        finally:
            self._masking = False


class TorchElmanLayer(_DropConnect, nn.RNN):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, num_layers=1, nonlinearity="tanh")

    def initial_state(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(1, batch_size, self.hidden_size)


class TorchLSTMLayer(_DropConnect, nn.LSTM):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, num_layers=1)

    def initial_state(self, batch_size: int, like: torch.Tensor):
        zeros = like.new_zeros(1, batch_size, self.hidden_size)
        return zeros, zeros.clone()


class TorchGRULayer(_DropConnect, nn.GRU):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, num_layers=1)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(1, batch_size, self.hidden_size)


class TorchBlock(nn.TransformerEncoderLayer):
    """A pre-LN GPT block: nn.TransformerEncoderLayer with GELU, batch-first, norm-first, causal mask."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__(
            d_model, n_heads, d_ff, dropout, activation="gelu", batch_first=True, norm_first=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.size(1), device=x.device, dtype=x.dtype)
        return super().forward(x, src_mask=mask, is_causal=True)

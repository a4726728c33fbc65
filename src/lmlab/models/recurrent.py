"""Recurrent language model: embedding -> stacked RNN/GRU/LSTM layers -> linear decoder over the vocabulary.

The recurrent layers are the only part that differs between ``impl = "scratch"`` (our tensor-op layers)
and ``impl = "nn"`` (``torch.nn.RNN``/``GRU``/``LSTM``, one per layer). Their parameters carry the same names, so a
state dict of one loads into the other, which is how the tests prove the two compute the same function.
Layers are stacked one module per layer (not ``nn.LSTM(num_layers=L)``) so that dropout between layers can
use one mask across time, which ``nn.LSTM``'s built-in inter-layer dropout cannot.

AWD-LSTM's regularisers (Merity et al. 2018) are options: ``weight_drop`` (DropConnect on the hidden-to-hidden
weights, one mask per call, in both implementations), ``dropout_words`` (embedding dropout: whole word types
dropped from the embedding matrix, one mask per call), and activation (AR) and
temporal activation regularisation (TAR), which a training forward leaves in ``regularization`` for the loop
to add to the loss. ``layer_norm`` swaps the from-scratch Elman cell for its layer-normalised form (Ba et al. 2016).
``compiled_cell`` (on by default) runs the from-scratch LSTM's per-step element-wise work as one compiled C++
pass on CPU (:mod:`lmlab.models.kernels`); off, or where it cannot be built, the same cell in tensor operations.
``output_cutoffs`` replaces the full softmax by a clustered (adaptive) one over the same word vectors
(:mod:`lmlab.models.adaptive_softmax`).
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models import nn_twins
from lmlab.models.adaptive_softmax import ClusteredOutput, check_cutoffs, vocabulary_output
from lmlab.models.dropout import LockedDropout, dropout
from lmlab.models.gru import GRULayer
from lmlab.models.lstm import LSTMLayer
from lmlab.models.rnn import ElmanLayer, NormalizedElmanLayer

LAYERS = {
    ("rnn", "scratch"): ElmanLayer,
    ("rnn", "nn"): nn_twins.TorchElmanLayer,
    ("gru", "scratch"): GRULayer,
    ("gru", "nn"): nn_twins.TorchGRULayer,
    ("lstm", "scratch"): LSTMLayer,
    ("lstm", "nn"): nn_twins.TorchLSTMLayer,
}


class RecurrentLM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        impl: str = "scratch",
        emb_size: int = 200,
        hidden_size: int = 200,
        num_layers: int = 2,
        dropout_emb: float = 0.0,
        dropout_layer: float = 0.0,
        dropout_out: float = 0.0,
        tie_weights: bool = True,
        init_range: float = 0.1,
        weight_drop: float = 0.0,
        dropout_words: float = 0.0,
        layer_norm: bool = False,
        compiled_cell: bool = True,
        activation_reg: float = 0.0,
        temporal_reg: float = 0.0,
        output_cutoffs: list[int] = (),
    ):
        super().__init__()
        if (cell, impl) not in LAYERS:
            raise ValueError(f"unknown recurrent cell/impl {cell}/{impl}")
        if tie_weights and hidden_size != emb_size and num_layers == 1:
            raise LmlabError(f"one tied layer needs model.hidden_size == model.emb_size (got {hidden_size} and "
                             f"{emb_size}): set them equal, add a layer or set model.tie_weights=false")
        layer = LAYERS[(cell, impl)]
        if layer_norm:
            if (cell, impl) != ("rnn", "scratch"):
                raise LmlabError(f"model.layer_norm is built for the from-scratch Elman RNN only (torch.nn has no "
                                 f"normalised cell), not {cell}/{impl}: set model.layer_norm=false")
            layer = NormalizedElmanLayer
        self.encoder = nn.Embedding(vocab_size, emb_size)
        # Tied, the last layer is as wide as the embedding and the layers below it are hidden_size wide
        # (AWD-LSTM's layout): the recurrent state can be wider than the word vectors it ends in.
        sizes = [hidden_size] * (num_layers - 1) + [emb_size if tie_weights else hidden_size]
        self.layers = nn.ModuleList(layer(n_in, n_out) for n_in, n_out in zip([emb_size] + sizes[:-1], sizes))
        for module in self.layers:
            module.weight_drop = weight_drop
            module.compiled_cell = compiled_cell
        self.dropout_words = dropout_words
        self.activation_reg, self.temporal_reg = activation_reg, temporal_reg
        self.regularization = torch.zeros(())  # AR + TAR of the last training forward (0 when off)
        self.drop_emb = LockedDropout(dropout_emb)
        self.drop_layer = LockedDropout(dropout_layer)
        self.drop_out = LockedDropout(dropout_out)
        self.decoder = nn.Linear(sizes[-1], vocab_size)
        # Tying (Press & Wolf 2017; Inan et al. 2017) shares the input and output word vectors: fewer
        # parameters and a better perplexity at this scale.
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -init_range, init_range)
        if not tie_weights:
            nn.init.uniform_(self.decoder.weight, -init_range, init_range)
        nn.init.zeros_(self.decoder.bias)
        # A clustered (adaptive) softmax over the same word vectors: most of the output layer's work skipped.
        self.clusters = None
        if cutoffs := check_cutoffs(output_cutoffs, vocab_size):
            self.clusters = ClusteredOutput(sizes[-1], cutoffs, bias=True)
            nn.init.uniform_(self.clusters.cluster.weight, -init_range, init_range)
            nn.init.zeros_(self.clusters.cluster.bias)

    def initial_state(self, batch_size: int, like):
        return [layer.initial_state(batch_size, like) for layer in self.layers]

    def forward(self, tokens, state, targets=None):
        """tokens: (T, B) ids; state: one entry per layer. Returns logits (T, B, V) and the new state, or with
        ``targets`` (T, B) the mean cross-entropy in place of the logits (fused with the decoder on CPU)."""
        x = self.drop_emb(self._word_vectors(tokens))
        new_state = []
        for k, (layer, layer_state) in enumerate(zip(self.layers, state)):
            raw, s = layer(x, layer_state)
            new_state.append(s)
            x = self.drop_layer(raw) if k < len(self.layers) - 1 else self.drop_out(raw)
        if self.training and (self.activation_reg or self.temporal_reg):
            self.regularization = self._activation_penalty(raw, x)
        return vocabulary_output(x, self.decoder, self.clusters, targets), new_state

    def _word_vectors(self, tokens):
        """The tokens' word vectors. While training with ``dropout_words`` (AWD-LSTM's embedding dropout, Gal &
        Ghahramani 2016), whole word types are dropped: one mask over the vocabulary per call, so a dropped word
        is a zero vector at every position of the window and the kept ones are scaled by 1 / (1 - p). This is
        AWD-LSTM's ``embedded_dropout`` (a lookup into the masked matrix), with the mask gathered per token
        instead of multiplied into the whole 10,000-row matrix; values and gradients are the same, and a tied
        decoder keeps the unmasked weights."""
        vectors = self.encoder(tokens)
        if not self.training or not self.dropout_words:
            return vectors
        keep = dropout(vectors.new_ones(self.encoder.num_embeddings), self.dropout_words)
        return vectors * keep[tokens].unsqueeze(-1)

    def _activation_penalty(self, raw, dropped):
        """AR: alpha * mean(h_t^2) of the last layer's dropped-out output (keeps activations small); TAR:
        beta * mean((h_t - h_{t-1})^2) of its raw output (keeps the state from jumping), as in AWD-LSTM."""
        penalty = self.activation_reg * dropped.pow(2).mean()
        if raw.size(0) > 1:
            penalty = penalty + self.temporal_reg * (raw[1:] - raw[:-1]).pow(2).mean()
        return penalty

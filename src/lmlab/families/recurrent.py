"""The recurrent family (Elman RNN, GRU, LSTM): contiguous columns in BPTT windows, state carried along.

Training walks ``batch_size`` parallel columns of the stream in windows of ``bptt`` steps, carrying the
(detached) state from window to window. Scoring does the same with ``eval_batch_size`` columns, each from a
zero state, so every token is conditioned on everything before it in its column. Generation carries the state
from token to token.
"""

from __future__ import annotations

import math

import torch

from lmlab.data.batching import batchify, batchify_padded, bptt_windows
from lmlab.families.base import WordLevelScoring, epoch_generator, position_stats, scored_in_eval_mode
from lmlab.models.recurrent import RecurrentLM
from lmlab.training.runtime import shard


class RecurrentFamily(WordLevelScoring):
    name = "recurrent"

    def build(self, options, vocab_size):
        options = dict(options)
        return RecurrentLM(vocab_size, cell=options.pop("arch"), **options)

    def steps_per_epoch(self, n_tokens, data, model):
        column = n_tokens // data.batch_size
        if column < 2:
            return 0
        if data.variable_bptt:  # each epoch draws its own lengths: count one draw's windows (within ~1%)
            return sum(1 for _ in bptt_windows(column, data.bptt, torch.Generator().manual_seed(0)))
        return math.ceil(column / data.bptt)

    def too_small(self, n_tokens, data):
        return (f"the training split ({n_tokens:,} tokens) is too small for one batch of {data.batch_size} "
                "columns: lower data.batch_size, or use more data")

    def train_batches(self, net, stream, data, epoch, seed, runtime):
        return _Columns(net, stream, data, epoch, seed, runtime)

    def score_settings(self, data):
        return {"batch_size": data.eval_batch_size, "bptt": data.bptt}

    @scored_in_eval_mode
    def token_records(self, model, inputs, targets, top=0, *, batch_size, bptt, **_):
        n = inputs.numel()
        device = next(model.parameters()).device
        batch_size = max(1, min(batch_size, n))
        xs, ys = batchify_padded(inputs, targets, batch_size)
        xs, ys = xs.to(device), ys.to(device)
        out: dict[str, torch.Tensor] = {}
        state = model.initial_state(batch_size, model.encoder.weight)
        for start, length in bptt_windows(xs.size(0), bptt):
            logits, state = model(xs[start : start + length], state)
            y = ys[start : start + length]
            stats = position_stats(logits.reshape(-1, logits.size(-1)), y.reshape(-1), top)
            for key, value in stats.items():
                if key not in out:
                    out[key] = value.new_zeros((*ys.shape, *value.shape[1:]))
                out[key][start : start + length] = value.view(*y.shape, *value.shape[1:])
        # Column b holds stream positions [b*steps, (b+1)*steps): transposing restores stream order.
        return {k: v.transpose(0, 1).reshape(-1, *v.shape[2:])[:n].cpu() for k, v in out.items()}

    def stepper(self, model, device, use_cache=True):
        state = model.initial_state(1, model.encoder.weight)

        def step(tokens, new):
            nonlocal state
            logits, state = model(torch.tensor(tokens[-new:], device=device).view(-1, 1), state)
            return logits[-1, 0]

        return step

    def evaluation_note(self, data, model):
        return (f"every token scored once; {data.eval_batch_size} contiguous columns, each from a zero state, "
                f"state carried across BPTT windows of {data.bptt}")


class _Columns:
    """BPTT windows over this process's columns; the state of one window starts the next (detached). With
    ``data.variable_bptt`` the window lengths of an epoch are drawn from (seed, epoch), the same on every process."""

    def __init__(self, net, stream, data, epoch, seed, runtime):
        xs, ys = batchify(*stream, data.batch_size)
        cols = shard(data.batch_size, runtime)
        self.xs, self.ys = xs[:, cols].to(runtime.device), ys[:, cols].to(runtime.device)
        self.bptt = data.bptt
        self.lengths = epoch_generator(seed, epoch) if data.variable_bptt else None
        self.state = net.initial_state(self.xs.size(1), net.encoder.weight)

    def __iter__(self):
        for start, length in bptt_windows(self.xs.size(0), self.bptt, self.lengths):
            yield self.xs[start : start + length], self.ys[start : start + length]

    def lr_scale(self, y):
        """AWD-LSTM scales the rate by length/bptt, so that a token's update does not depend on its window's
        length (the loss is a mean over the window's tokens)."""
        return y.size(0) / self.bptt if self.lengths is not None else 1.0

    def loss(self, model, x, y):
        loss, state = model(x, self.state, targets=y)
        self.state = _detach(state)
        return loss


def _detach(state):
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(_detach(s) for s in state)


RECURRENT = RecurrentFamily()

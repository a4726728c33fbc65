"""The Transformer family: shuffled context windows for training, sliding windows for scoring, a key/value
cache for generation.

Scoring uses sliding windows of the full context with a stride: every token is scored exactly once, with at
least ``context - stride`` tokens of left context (all of them within the first window).
"""

from __future__ import annotations

import torch

from lmlab.data.batching import IGNORE, context_windows, sliding_windows
from lmlab.families.base import WordLevelScoring, epoch_generator, position_stats, scored_in_eval_mode
from lmlab.models.transformer import TransformerLM
from lmlab.training.runtime import shard


class TransformerFamily(WordLevelScoring):
    name = "transformer"

    def build(self, options, vocab_size):
        options = dict(options)
        options.pop("arch")
        return TransformerLM(vocab_size, **options)

    def steps_per_epoch(self, n_tokens, data, model):
        return (n_tokens // model.context_length - 1) // data.batch_size

    def too_small(self, n_tokens, data):
        return (f"the training split ({n_tokens:,} tokens) is too small for one batch of {data.batch_size} "
                "windows: lower data.batch_size or model.context_length, or use more data")

    def train_batches(self, net, stream, data, epoch, seed, runtime):
        return _Windows(stream, data, net.context_length, epoch, seed, runtime)

    def score_settings(self, data):
        return {"batch_size": data.eval_batch_size, "stride": data.eval_stride or None}

    @scored_in_eval_mode
    def token_records(self, model, inputs, targets, top=0, *, batch_size, stride=None, **_):
        device = next(model.parameters()).device
        context = model.context_length
        xs, ys = sliding_windows(inputs, targets, context, stride or context // 2)
        pieces: dict[str, list[torch.Tensor]] = {}
        for start in range(0, xs.size(0), batch_size):
            x, y = xs[start : start + batch_size].to(device), ys[start : start + batch_size].to(device)
            logits = model(x)
            flat_y = y.reshape(-1)
            stats = position_stats(logits.reshape(-1, logits.size(-1)), flat_y, top)
            # Windows are in stream order and each scores a contiguous run of new targets: keep the scored ones.
            for key, value in stats.items():
                pieces.setdefault(key, []).append(value[flat_y != IGNORE].cpu())
        return {k: torch.cat(v) for k, v in pieces.items()}

    def stepper(self, model, device, use_cache=True):
        """With the cache, one new position per step; past the context length (absolute positions) the cache
        restarts from the last ``context_length - 1`` tokens."""
        context = model.context_length
        cache = model.new_cache() if use_cache else None

        def step(tokens, new):
            nonlocal cache
            if not use_cache:
                return model(torch.tensor(tokens[-context:], device=device).view(1, -1))[0, -1]
            if cache[0].length + new > context:
                cache = model.new_cache()
                new = min(len(tokens), context - 1)
            return model(torch.tensor(tokens[-new:], device=device).view(1, -1), cache)[0, -1]

        return step

    def evaluation_note(self, data, model):
        context = model.context_length
        stride = data.eval_stride or context // 2
        return (f"every token scored once; sliding windows of {context} tokens with stride {stride}: each token "
                f"after the first window sees at least {context - stride} tokens of left context")


class _Windows:
    """Shuffled non-overlapping context windows; the window grid shifts each epoch (same on every process)."""

    def __init__(self, stream, data, context, epoch, seed, runtime):
        g = epoch_generator(seed, epoch)
        offset = int(torch.randint(0, context, (1,), generator=g))
        self.xs, self.ys = context_windows(*stream, context, offset)
        self.order = torch.randperm(self.xs.size(0), generator=g)
        self.batch_size, self.device = data.batch_size, runtime.device
        self.cols = shard(self.batch_size, runtime)

    def __iter__(self):
        for b in range(self.order.numel() // self.batch_size):  # the last partial batch is dropped
            idx = self.order[b * self.batch_size : (b + 1) * self.batch_size][self.cols]
            yield self.xs[idx].to(self.device), self.ys[idx].to(self.device)

    def loss(self, model, x, y):
        return model(x, targets=y)

    def lr_scale(self, y):
        return 1.0


TRANSFORMER = TransformerFamily()

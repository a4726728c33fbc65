"""The interface every model family implements (see lmlab.families)."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn.functional as F

from lmlab.data.batching import IGNORE

Step = Callable[[list[int], int], torch.Tensor]  # (tokens so far, how many are new) -> next-token logits (V,)


class Batches(Protocol):
    """One epoch of training batches for this process, and the forward pass that consumes them."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def loss(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy of a batch (a recurrent family carries its state to the next batch)."""

    def lr_scale(self, y: torch.Tensor) -> float:
        """The factor on the learning rate for this batch's update (1 unless its length varies)."""


class Family(Protocol):
    name: str

    def build(self, options: dict[str, Any], vocab_size: int) -> torch.nn.Module: ...

    def steps_per_epoch(self, n_tokens: int, data, model) -> int: ...

    def too_small(self, n_tokens: int, data) -> str:
        """Why a split of ``n_tokens`` cannot make one batch, and what to change."""

    def train_batches(self, net, stream, data, epoch: int, seed: int, runtime) -> Batches: ...

    def score_settings(self, data) -> dict[str, Any]:
        """The keyword arguments of :meth:`token_nlls` that a run's ``[data]`` config fixes."""

    def token_nlls(self, model, inputs: torch.Tensor, targets: torch.Tensor, **settings) -> torch.Tensor:
        """NLL (nats, float64) of each target of the stream, in stream order, every target scored once."""

    def token_records(self, model, inputs: torch.Tensor, targets: torch.Tensor, top: int = 0,
                      **settings) -> dict[str, torch.Tensor]:
        """The same scoring with, per target, its rank among all tokens and the ``top`` most likely tokens:
        ``nll`` (N,), and with ``top`` also ``rank`` (N,), ``top_ids`` (N, top), ``top_logp`` (N, top)."""

    def stepper(self, model, device: torch.device, use_cache: bool = True) -> Step: ...

    def evaluation_note(self, data, model) -> str: ...


def scored_in_eval_mode(token_records):
    """Decorate a family's ``token_records``: no gradients, dropout off while scoring, the caller's mode
    restored, and every target scored exactly once."""

    @functools.wraps(token_records)
    def wrapper(self, model, inputs, targets, top=0, **settings):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = token_records(self, model, inputs, targets, top, **settings)
        finally:
            model.train(was_training)
        assert out["nll"].numel() == targets.numel()
        return out

    return wrapper


class WordLevelScoring:
    """``token_nlls`` as the NLL column of ``token_records``, so both always score text the same way."""

    def token_nlls(self, model, inputs, targets, **settings):
        return self.token_records(model, inputs, targets, 0, **settings)["nll"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random draws of one epoch's training batches (window grid, order, lengths): the same on every process,
    and again in a replay or a resume of that epoch."""
    return torch.Generator().manual_seed(seed * 1000 + epoch)


def position_stats(logits: torch.Tensor, y: torch.Tensor, top: int) -> dict[str, torch.Tensor]:
    """Per position of ``logits`` (P, V) with targets ``y`` (P,): the NLL (float64; 0 where y is ignored) and,
    with ``top``, the target's rank (1 = most likely) and the ``top`` most likely ids with their log-probs."""
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision is scored in fp32
    out = {"nll": F.cross_entropy(wide, y, ignore_index=IGNORE, reduction="none").double()}
    if top:
        target = wide.gather(1, y.clamp(min=0)[:, None])
        out["rank"] = (wide > target).sum(1) + 1
        values, ids = wide.log_softmax(-1).topk(top, dim=-1)
        out["top_ids"], out["top_logp"] = ids, values.double()
    return out

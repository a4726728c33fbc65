"""The interface every model family implements (see lmlab.families)."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Protocol

import torch

Step = Callable[[list[int], int], torch.Tensor]  # (tokens so far, how many are new) -> next-token logits (V,)


class Batches(Protocol):
    """One epoch of training batches for this process, and the forward pass that consumes them."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def forward(self, model, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch ``x`` (a recurrent family carries its state to the next batch)."""


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

    def stepper(self, model, device: torch.device, use_cache: bool = True) -> Step: ...

    def evaluation_note(self, data, model) -> str: ...


def scored_in_eval_mode(token_nlls):
    """Decorate a family's ``token_nlls``: no gradients, dropout off while scoring, the caller's mode restored."""

    @functools.wraps(token_nlls)
    def wrapper(self, model, inputs, targets, **settings):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = token_nlls(self, model, inputs, targets, **settings)
        finally:
            model.train(was_training)
        assert out.numel() == targets.numel()
        return out

    return wrapper

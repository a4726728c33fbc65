"""Turning a token stream into batches.

Every split is scored as a stream whose first target is its first token: an ``<eos>`` (the end of the
previous line) is prepended as context, so a split of N tokens has exactly N targets. Positions that carry
no target (padding, or tokens a sliding window already scored) hold ``IGNORE`` and are skipped by the loss.
"""

from __future__ import annotations

import torch

IGNORE = -100  # F.cross_entropy's default ignore_index


def lm_pairs(ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of equal length N for a stream of N tokens."""
    stream = torch.cat([torch.tensor([eos_id], dtype=ids.dtype), ids])
    return stream[:-1], stream[1:]


# --- recurrent models: B parallel columns walked in BPTT windows, state carried across windows ---------


def batchify(inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the stream into ``batch_size`` contiguous columns, time-major (T, B); the remainder is dropped.

    This is the training layout of Zaremba et al. and pytorch/examples: column b continues where its
    previous window stopped, so the hidden state can be carried (detached) across windows.
    """
    steps = inputs.numel() // batch_size
    if steps < 2:
        raise ValueError(f"stream of {inputs.numel()} tokens is too short for batch size {batch_size}")
    cut = steps * batch_size
    return (
        inputs[:cut].view(batch_size, steps).t().contiguous(),
        targets[:cut].view(batch_size, steps).t().contiguous(),
    )


def batchify_padded(inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`batchify`, but pads instead of dropping, so evaluation scores every token exactly once."""
    n = inputs.numel()
    steps = -(-n // batch_size)
    pad = steps * batch_size - n
    inputs = torch.cat([inputs, inputs.new_zeros(pad)])
    targets = torch.cat([targets, targets.new_full((pad,), IGNORE)])
    return inputs.view(batch_size, steps).t().contiguous(), targets.view(batch_size, steps).t().contiguous()


def bptt_windows(total_steps: int, bptt: int, generator: torch.Generator | None = None):
    """Start and length of each BPTT window over ``total_steps`` time steps.

    With a ``generator``, window lengths vary as in AWD-LSTM (Merity, Keskar & Socher 2018, sec. 4.1): each is
    drawn from N(bptt, 5), or N(bptt/2, 5) with probability 0.05, truncated to an integer of at least 5. With
    fixed windows every epoch cuts the stream at the same tokens, so the token after a cut never has a gradient
    path into the tokens before it; varying the lengths moves the cuts from epoch to epoch.
    """
    start = 0
    while start < total_steps:
        length = bptt if generator is None else _variable_length(bptt, generator)
        length = min(length, total_steps - start)
        yield start, length
        start += length


def _variable_length(bptt: int, generator: torch.Generator) -> int:
    mean = bptt if float(torch.rand((), generator=generator)) < 0.95 else bptt / 2
    return max(5, int(torch.normal(float(mean), 5.0, (1,), generator=generator)))


# --- transformer: fixed-length context windows ----------------------------------------------------------


def context_windows(
    inputs: torch.Tensor, targets: torch.Tensor, context: int, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of ``context`` tokens (N_windows, context), starting at ``offset``.

    Training shifts ``offset`` each epoch so window boundaries fall on different tokens.
    """
    n = (inputs.numel() - offset) // context
    if n < 1:
        raise ValueError(f"stream of {inputs.numel()} tokens is shorter than one context of {context}")
    end = offset + n * context
    return inputs[offset:end].view(n, context), targets[offset:end].view(n, context)


def sliding_windows(
    inputs: torch.Tensor, targets: torch.Tensor, context: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation windows that score every target exactly once.

    Window k covers ``[k*stride, k*stride + context)`` and scores only the targets not scored by window k-1,
    so every token after the first window is predicted with at least ``context - stride`` tokens of left
    context (``stride == 1`` gives every token the full context). The last window is padded.
    """
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    n = inputs.numel()
    xs, ys = [], []
    scored_until = 0
    start = 0
    while scored_until < n:
        end = min(start + context, n)
        x = inputs[start:end]
        y = targets[start:end].clone()
        y[: scored_until - start] = IGNORE  # already scored by the previous window
        pad = context - (end - start)
        xs.append(torch.cat([x, x.new_zeros(pad)]))
        ys.append(torch.cat([y, y.new_full((pad,), IGNORE)]))
        scored_until = end
        start += stride
    return torch.stack(xs), torch.stack(ys)

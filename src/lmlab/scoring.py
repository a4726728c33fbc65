"""Per-token negative log-likelihoods of a token stream under a word-level model.

One function for both families, so training-time validation and later evaluation score text identically:
- recurrent models walk ``batch_size`` contiguous columns in BPTT windows, carrying the state, so each token
  is conditioned on everything before it in its column (a column starts from a zero state);
- the Transformer uses sliding windows of its full context with a stride: every token is scored exactly
  once, with at least ``context - stride`` tokens of left context (all of them within the first window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.data.batching import IGNORE, batchify_padded, bptt_windows, sliding_windows


def score_settings(data_cfg: dict) -> dict:
    """The keyword arguments of :func:`token_nlls` that a run's ``[data]`` config fixes, so training-time
    validation and every later evaluation of the run score text the same way."""
    return {"batch_size": data_cfg["eval_batch_size"], "bptt": data_cfg.get("bptt", 35),
            "stride": data_cfg.get("eval_stride") or None}


@torch.no_grad()
def token_nlls(
    model,
    family: str,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    batch_size: int,
    bptt: int = 35,
    stride: int | None = None,
) -> torch.Tensor:
    """NLL (nats, float64) of each of the N targets, in stream order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        if family == "recurrent":
            out = _recurrent(model, inputs, targets, batch_size, bptt, device)
        else:
            out = _transformer(model, inputs, targets, batch_size, stride, device)
    finally:
        model.train(was_training)
    assert out.numel() == targets.numel()
    return out


def _recurrent(model, inputs, targets, batch_size, bptt, device):
    n = inputs.numel()
    batch_size = max(1, min(batch_size, n))
    xs, ys = batchify_padded(inputs, targets, batch_size)
    xs, ys = xs.to(device), ys.to(device)
    nll = torch.zeros(ys.shape, dtype=torch.float64, device=device)
    state = model.initial_state(batch_size, model.encoder.weight)
    for start, length in bptt_windows(xs.size(0), bptt):
        logits, state = model(xs[start : start + length], state)
        y = ys[start : start + length]
        nll[start : start + length] = F.cross_entropy(
            _wide(logits).reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).view_as(y).double()
    # Column b holds stream positions [b*steps, (b+1)*steps): transposing restores stream order.
    return nll.t().reshape(-1)[:n].cpu()


def _transformer(model, inputs, targets, batch_size, stride, device):
    context = model.context_length
    stride = stride or context // 2
    xs, ys = sliding_windows(inputs, targets, context, stride)
    pieces = []
    for start in range(0, xs.size(0), batch_size):
        x = xs[start : start + batch_size].to(device)
        y = ys[start : start + batch_size].to(device)
        logits = model(x)
        nll = F.cross_entropy(
            _wide(logits).reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE, reduction="none"
        )
        # Windows are in stream order and each scores a contiguous run of new targets: keep the scored ones.
        pieces.append(nll[y.reshape(-1) != IGNORE].double().cpu())
    return torch.cat(pieces)


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are scored in fp32; fp32/fp64 logits keep their precision."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))

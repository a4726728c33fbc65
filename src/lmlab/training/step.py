"""One optimiser step of a word-level model, shared by training and the budget's timing probe (so the probe
times exactly what training runs)."""

from __future__ import annotations

import contextlib

import torch


def optimizer_step(batches, model, net, x, y, optimizer, clip: float, autocast=None):
    """Forward and cross-entropy (through ``model``, which may wrap ``net`` in DDP or a compiled graph; the
    output layer and the loss are one fused op on CPU), backward, gradient clipping, update at the scheduled rate
    times ``batches.lr_scale(y)``. Returns the mean token NLL (detached); regularisers a model adds (AR/TAR of
    recurrent models) enter the gradient but not the returned loss, which stays a pure NLL."""
    with autocast or contextlib.nullcontext():
        loss = batches.loss(model, x, y)
    optimizer.zero_grad(set_to_none=True)
    (loss + getattr(net, "regularization", 0.0)).backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    rates = [group["lr"] for group in optimizer.param_groups]
    scale = batches.lr_scale(y)  # 1, unless the batches' lengths vary (data.variable_bptt)
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate * scale
    optimizer.step()
    for group, rate in zip(optimizer.param_groups, rates):  # the schedule owns the rate between steps
        group["lr"] = rate
    return loss.detach()

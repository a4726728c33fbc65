"""The output layer and the cross-entropy in one pass over row chunks, for training on CPU.

``F.cross_entropy(F.linear(h, W, b), y)`` materialises the (tokens x vocabulary) logits, their log-softmax,
a zero-filled gradient of the same size and the log-softmax backward: four passes over 80 MB for the
Transformer preset's 2,048 x 10,000 step. Here the logits of up to 1,024 rows at a time give their loss and,
since the loss is the model's last operation, their gradient at once: softmax minus the one-hot target, which
the two gradient matmuls consume before the next chunk (one exp pass serves both the log-normaliser and the
softmax). The backward then only scales the stored gradients by the incoming one. Loss and gradients equal the
two-op version's to fp32 rounding (tested); the output layer plus cross-entropy ran 1.7x faster (median of 8,
2 threads, with 128-row chunks).

The chunk is large because the three matmuls are nearly all of this op's time (88% in a profile at 128 rows)
and run faster on taller matrices: with 1,024-row chunks instead of 128 the op took 79-86 ms instead of
110-114 ms at the Elman RNN preset's 700 x 320 step (2 threads, medians of 8, two rounds); the element-wise
passes were 9% of it either way. (A variant with one fused log-softmax instead of the max/exp/sum passes was
no faster.)

The logits buffer is kept between calls (``_logits_buffer``). Freshly allocated, the Transformer preset's
1,024 x 10,000 chunk (41 MB, above glibc's 32 MB limit for reusing freed heap memory) came from a new mapping
at every step and paid its page faults inside the first matmul: its training step took 364 instead of 344 ms
(medians of 32 steps, alternating, 2 threads). The LSTM's 700 x 10,000 buffer (28 MB) was already reused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.data.batching import IGNORE

CHUNK = 1024  # rows of logits at a time: 41 MB at a 10,000-word vocabulary (see the module docstring)
_workspace: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _logits_buffer(like: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """A (rows x columns) buffer of ``like``'s device and dtype, reused by every call (its contents never leave
    the forward pass). It only grows: at most one chunk of logits stays allocated. Under torch.compile a fresh
    one: a tensor kept across calls is state that dynamo cannot trace, and the compiled graph plans its own memory."""
    if torch.compiler.is_compiling():
        return like.new_empty(rows, columns)
    key = (like.device, like.dtype)
    buffer = _workspace.get(key)
    if buffer is None or buffer.numel() < rows * columns:
        buffer = _workspace[key] = like.new_empty(rows * columns)
    return buffer[: rows * columns].view(rows, columns)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        valid = targets != IGNORE
        # The mean over the scored targets, as F.cross_entropy; a tensor, so torch.compile needs no graph break.
        scale = 1.0 / valid.sum().clamp(min=1)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        grad_bias = None if bias is None else torch.zeros_like(bias)
        total = hidden.new_zeros(())
        buffer = _logits_buffer(hidden, min(CHUNK, hidden.size(0)), weight.size(0))
        for start in range(0, hidden.size(0), CHUNK):
            h, t, keep = hidden[start : start + CHUNK], targets[start : start + CHUNK], valid[start : start + CHUNK]
            logits = buffer[: h.size(0)]
            if bias is None:
                torch.mm(h, weight.t(), out=logits)
            else:
                torch.addmm(bias, h, weight.t(), out=logits)
            rows, safe = torch.arange(h.size(0)), t.clamp(min=0)
            target_logit = logits[rows, safe]
            # One exp pass gives both the log-normaliser and the softmax (logsumexp would take its own).
            top = logits.amax(1, keepdim=True)
            probs = logits.sub_(top).exp_()  # in place of the logits
            norm = probs.sum(1)
            total += ((top.squeeze(1) + norm.log() - target_logit) * keep).sum()
            row_weight = keep * scale
            grad = probs.mul_((row_weight / norm)[:, None])  # softmax minus the one-hot target, scaled
            grad[rows, safe] -= row_weight
            torch.mm(grad, weight, out=grad_hidden[start : start + CHUNK])
            grad_weight.addmm_(grad.t(), h)
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, *(() if grad_bias is None else (grad_bias,)))
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, *grad_bias = ctx.saved_tensors
        return (grad_hidden * grad_loss, grad_weight * grad_loss,
                grad_bias[0] * grad_loss if grad_bias else None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``F.linear(hidden, weight, bias)`` against ``targets`` (IGNORE skipped).
    hidden: (..., D); targets: (...). Fused on CPU when gradients are wanted; the two plain ops otherwise
    (CUDA, autocast, evaluation)."""
    hidden, targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
    if hidden.device.type == "cpu" and torch.is_grad_enabled() and hidden.dtype == weight.dtype == torch.float32:
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets)
    logits = F.linear(hidden, weight, bias)
    # bf16/fp16 logits are scored in fp32; fp64 stays fp64
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, ignore_index=IGNORE)

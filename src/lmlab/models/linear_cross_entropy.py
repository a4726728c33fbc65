"""The output layer and the cross-entropy in one pass over row chunks, for training on CPU.

``F.cross_entropy(F.linear(h, W, b), y)`` materialises the (tokens x vocabulary) logits, their log-softmax,
a zero-filled gradient of the same size and the log-softmax backward: four passes over 80 MB for the
Transformer preset's 2,048 x 10,000 step. Here the logits of up to 1,024 rows at a time give their loss and,
since the loss is the model's last operation, their gradient at once: softmax minus the one-hot target, which
the two gradient matmuls consume before the next chunk (one exp pass serves both the log-normaliser and the
softmax). The backward then only scales the stored gradients by the incoming one (or, when that is 1, hands
them over as they are). Loss and gradients equal the two-op version's to fp32 rounding (tested); the output
layer plus cross-entropy ran 1.7x faster (median of 8, 2 threads, with 128-row chunks).

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


def fused_applies(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether training runs the fused op: CPU, float32, gradients wanted (elsewhere the two plain ops)."""
    return hidden.device.type == "cpu" and torch.is_grad_enabled() and hidden.dtype == weight.dtype == torch.float32


def scored_rows(hidden, weight, bias, targets, row_weight, grad_hidden, grad_weight, grad_bias) -> torch.Tensor:
    """sum over rows of row_weight * -log softmax(hidden W^T + b)[target], and its gradients: written to
    ``grad_hidden`` (rows x D), ``grad_weight`` and ``grad_bias`` (None without a bias), all overwritten rather
    than added to, so they can be fresh ``empty`` tensors or slices of a larger gradient. ``row_weight``: one per
    row, 0 where the target is ignored (such a row's target must still be a valid index or IGNORE)."""
    if hidden.size(0) == 0:
        grad_weight.zero_()
        if grad_bias is not None:
            grad_bias.zero_()
        return hidden.new_zeros(())
    total = hidden.new_zeros(())
    buffer = _logits_buffer(hidden, min(CHUNK, hidden.size(0)), weight.size(0))
    for start in range(0, hidden.size(0), CHUNK):
        h, t, w = hidden[start : start + CHUNK], targets[start : start + CHUNK], row_weight[start : start + CHUNK]
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
        total += ((top.squeeze(1) + norm.log() - target_logit) * w).sum()
        grad = probs.mul_((w / norm)[:, None])  # softmax minus the one-hot target, weighted
        grad[rows, safe] -= w
        torch.mm(grad, weight, out=grad_hidden[start : start + CHUNK])
        # The first chunk writes the weight's gradient (beta=0 ignores the empty tensor's contents, NaN included),
        # which saves a zero-filled pass over the vocabulary x width matrix.
        grad_weight.addmm_(grad.t(), h, beta=0.0 if start == 0 else 1.0)
        if grad_bias is not None:
            if start == 0:
                torch.sum(grad, 0, out=grad_bias)
            else:
                grad_bias += grad.sum(0)
    return total


def scaled_gradients(grads, grad_loss: torch.Tensor) -> tuple:
    """The gradients a fused loss stored in its forward pass, times the gradient flowing into the loss. When that
    is 1 (backward() starts from the loss, the usual case) they go back as they are, and autograd moves them into
    ``.grad`` without a copy: a multiplication would be one more pass over the vocabulary x width matrix."""
    if not torch.compiler.is_compiling() and bool(grad_loss == 1):
        return tuple(grads)
    return tuple(None if g is None else g * grad_loss for g in grads)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        valid = targets != IGNORE
        # The mean over the scored targets, as F.cross_entropy; a tensor, so torch.compile needs no graph break.
        scale = 1.0 / valid.sum().clamp(min=1)
        grads = (torch.empty_like(hidden), torch.empty_like(weight), None if bias is None else torch.empty_like(bias))
        total = scored_rows(hidden, weight, bias, targets, valid * scale, *grads)
        ctx.save_for_backward(*grads)  # the bias's None included: saved_tensors gives it back
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        return (*scaled_gradients(ctx.saved_tensors, grad_loss), None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``F.linear(hidden, weight, bias)`` against ``targets`` (IGNORE skipped).
    hidden: (..., D); targets: (...). Fused on CPU when gradients are wanted; the two plain ops otherwise
    (CUDA, autocast, evaluation)."""
    hidden, targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
    if fused_applies(hidden, weight):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets)
    logits = F.linear(hidden, weight, bias)
    # bf16/fp16 logits are scored in fp32; fp64 stays fp64
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, ignore_index=IGNORE)

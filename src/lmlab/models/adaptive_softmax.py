"""A frequency-clustered (adaptive) softmax over the output word vectors: most of the output layer's work skipped.

At the ``cpu`` presets' size the output layer is most of a word-level LM's training FLOPs: 89% of the Elman
RNN's matmul FLOPs and 71% of the LSTM's go to scoring all 10,000 words at every position. A word's probability
is factored instead as p(w) = p(c(w)) p(w | c(w)) over clusters of words by frequency (class-based softmax,
Goodman 2001; frequency binning, Mikolov et al. 2011; the adaptive softmax of Grave et al. 2017, which lmlab
follows). The vocabulary is ordered by training frequency, so ``cutoffs = [c0, c1, ...]`` split the ids into a
head [0, c0) and tail clusters [c0, c1), [c1, c2), ... . The head scores its c0 words and one entry per tail
cluster at every position; a tail cluster's words are scored only at the positions whose target lies in it.
With ``cutoffs = [2000]`` on PTB (87% of training tokens in the head) a step scores 2,001 + 0.13 x 8,000 words
per position instead of 10,000.

Unlike Grave et al., the tail clusters keep the full width and the (tied) word vectors, with no projection: the
parameters are the full softmax's plus one vector and one bias per tail cluster, so models stay comparable at
equal size. The distribution is a normalised one over the whole vocabulary, so perplexities remain exact; what
changes is the model (a factored softmax), not how it is scored.

Training scores the head and each cluster's rows with the fused output layer + cross-entropy
(:mod:`lmlab.models.linear_cross_entropy`), on CPU inside one autograd node that writes every part's gradient
into one gradient of the word vectors; evaluation and generation get the full (positions x vocabulary)
log-probabilities.
Both are checked against ``torch.nn.AdaptiveLogSoftmaxWithLoss`` set to the same weights (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.data.batching import IGNORE
from lmlab.errors import LmlabError
from lmlab.models.linear_cross_entropy import fused_applies, linear_cross_entropy, scaled_gradients, scored_rows


def check_cutoffs(cutoffs: list[int], vocab_size: int) -> list[int]:
    """The cutoffs that fall inside the vocabulary (a preset's [2000] leaves a smaller corpus's vocabulary with
    the full softmax: [] back), or a one-line error naming the fix."""
    cutoffs = [int(c) for c in cutoffs]
    if any(b <= a for a, b in zip([0] + cutoffs, cutoffs)):
        raise LmlabError(f"model.output_cutoffs={cutoffs} must rise strictly from above 0: e.g. [2000], or [] for "
                         "the full softmax")
    return [c for c in cutoffs if c < vocab_size]


def _head(weight, bias, cluster_weight, cluster_bias, c0):
    """The head's scoring matrix and bias: the c0 most frequent words' vectors, then one vector per cluster."""
    head_bias = None if bias is None else torch.cat([bias[:c0], cluster_bias])
    return torch.cat([weight[:c0], cluster_weight]), head_bias


def _tails(cutoffs, vocab_size):
    return list(zip(cutoffs, cutoffs[1:] + [vocab_size]))


def _split_targets(targets, cutoffs, vocab_size):
    """The head's targets (a tail word's becomes its cluster's entry), and per tail cluster (lo, hi, the rows whose
    target lies in it)."""
    head_targets = targets.clone()
    tails = []
    for cluster, (lo, hi) in enumerate(_tails(cutoffs, vocab_size)):
        rows = ((targets >= lo) & (targets < hi)).nonzero().squeeze(1)
        head_targets[rows] = cutoffs[0] + cluster
        tails.append((lo, hi, rows))
    return head_targets, tails


def adaptive_cross_entropy(hidden, weight, bias, cluster_weight, cluster_bias, targets, cutoffs):
    """Mean cross-entropy of the clustered softmax over ``targets`` (IGNORE skipped): -log p(c(w)) at every
    position, plus -log p(w | c(w)) at the positions whose target lies in a tail cluster.
    hidden: (..., D); weight: (V, D) output word vectors, frequency-ordered; bias: (V,) or None;
    cluster_weight: (clusters, D); cluster_bias: (clusters,) or None; targets: (...)."""
    hidden, targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
    if fused_applies(hidden, weight) and not torch.compiler.is_compiling():
        return _AdaptiveCrossEntropy.apply(hidden, weight, bias, cluster_weight, cluster_bias, targets, cutoffs)
    return composed_adaptive_cross_entropy(hidden, weight, bias, cluster_weight, cluster_bias, targets, cutoffs)


def composed_adaptive_cross_entropy(hidden, weight, bias, cluster_weight, cluster_bias, targets, cutoffs):
    """The same loss composed of one output layer + cross-entropy per part, autograd joining their gradients: the
    path on CUDA, in float64 and under torch.compile (hidden: (N, D), targets: (N,))."""
    head_targets, tails = _split_targets(targets, cutoffs, weight.size(0))
    total = hidden.new_zeros(())
    for lo, hi, rows in tails:
        if rows.numel():
            tail_bias = None if bias is None else bias[lo:hi]
            # linear_cross_entropy gives a mean over its rows: times the rows, a sum.
            total = total + rows.numel() * linear_cross_entropy(hidden[rows], weight[lo:hi], tail_bias,
                                                                targets[rows] - lo)
    scored = (targets != IGNORE).sum()
    total = total + scored * linear_cross_entropy(
        hidden, *_head(weight, bias, cluster_weight, cluster_bias, cutoffs[0]), head_targets)
    return total / scored.clamp(min=1)


class _AdaptiveCrossEntropy(torch.autograd.Function):
    """The loss above as one autograd node for CPU training: every part's gradient is written straight into one
    (V x D) gradient of the word vectors. Composed of the fused op per part, autograd would instead zero-fill a
    (V x D) gradient for each slice and for the head's concatenation and add them up: 10% of the LSTM preset's
    training step went to such passes over the 10,000 x 256 matrix (torch.profiler, 2 threads)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, cluster_weight, cluster_bias, targets, cutoffs):
        c0 = cutoffs[0]
        valid = targets != IGNORE
        scale = 1.0 / valid.sum().clamp(min=1)  # every scored position weighs the same: the mean over them
        head_targets, tails = _split_targets(targets, cutoffs, weight.size(0))
        grad_weight = torch.empty_like(weight)
        grad_bias = None if bias is None else torch.empty_like(bias)
        total = hidden.new_zeros(())
        tail_grads = []
        for lo, hi, rows in tails:
            grad_rows = hidden.new_empty(rows.numel(), hidden.size(1))
            total += scored_rows(hidden[rows], weight[lo:hi], None if bias is None else bias[lo:hi], targets[rows] - lo,
                                 scale.expand(rows.numel()), grad_rows, grad_weight[lo:hi],
                                 None if bias is None else grad_bias[lo:hi])
            tail_grads.append((rows, grad_rows))
        head_weight, head_bias = _head(weight, bias, cluster_weight, cluster_bias, c0)
        grad_hidden = torch.empty_like(hidden)
        grad_head_weight = torch.empty_like(head_weight)
        grad_head_bias = None if head_bias is None else torch.empty_like(head_bias)
        total += scored_rows(hidden, head_weight, head_bias, head_targets, valid * scale, grad_hidden,
                             grad_head_weight, grad_head_bias)
        for rows, grad_rows in tail_grads:
            grad_hidden.index_add_(0, rows, grad_rows)
        grad_weight[:c0] = grad_head_weight[:c0]
        if bias is not None:
            grad_bias[:c0] = grad_head_bias[:c0]
        # In the inputs' order; None where there is no bias.
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias, grad_head_weight[c0:],
                              None if grad_head_bias is None else grad_head_bias[c0:])
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        return (*scaled_gradients(ctx.saved_tensors, grad_loss), None, None)


def adaptive_log_probs(hidden, weight, bias, cluster_weight, cluster_bias, cutoffs):
    """Log-probabilities of every word, (..., V): log p(c) + log p(w | c) for tail words, log p(w) in the head.
    They are valid logits (their softmax is the distribution itself), so every consumer of logits is exact."""
    c0 = cutoffs[0]
    head = F.log_softmax(F.linear(hidden, *_head(weight, bias, cluster_weight, cluster_bias, c0)), dim=-1)
    parts = [head[..., :c0]]
    for cluster, (lo, hi) in enumerate(_tails(cutoffs, weight.size(0))):
        tail_logits = F.linear(hidden, weight[lo:hi], None if bias is None else bias[lo:hi])
        parts.append(F.log_softmax(tail_logits, dim=-1) + head[..., c0 + cluster : c0 + cluster + 1])
    return torch.cat(parts, dim=-1)


class ClusteredOutput(torch.nn.Module):
    """The tail clusters' head entries (a vector each, and a bias where the output layer has biases) for a model's
    output layer ``decoder``; the model initialises them as its own output layer. ``cutoffs``: checked ones."""

    def __init__(self, width: int, cutoffs: list[int], bias: bool):
        super().__init__()
        self.cutoffs = cutoffs
        self.cluster = torch.nn.Linear(width, len(self.cutoffs), bias=bias)

    def forward(self, hidden, decoder: torch.nn.Linear, targets=None):
        """The mean cross-entropy against ``targets``, or without them every word's log-probability."""
        args = (hidden, decoder.weight, decoder.bias, self.cluster.weight, self.cluster.bias)
        if targets is None:
            return adaptive_log_probs(*args, self.cutoffs)
        return adaptive_cross_entropy(*args, targets, self.cutoffs)


def vocabulary_output(hidden, decoder: torch.nn.Linear, clusters: ClusteredOutput | None, targets=None):
    """A model's last step: with ``targets`` the mean cross-entropy (the output layer fused with it), without
    them scores over the vocabulary: logits, or with ``clusters`` log-probabilities, whose softmax is the same
    distribution, so scoring and sampling read both alike."""
    if clusters is not None:
        return clusters(hidden, decoder, targets)
    if targets is not None:
        return linear_cross_entropy(hidden, decoder.weight, decoder.bias, targets)
    return decoder(hidden)

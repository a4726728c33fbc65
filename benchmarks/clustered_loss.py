"""The clustered softmax's training loss as one autograd node, against the same loss composed of its parts, in one run.

For each chosen ``cpu`` preset with a clustered softmax (``model.output_cutoffs``), on its training step's output
shape (bptt x batch rows of the last layer's width, word vectors tied with the embedding), this times forward +
backward of:

- ``adaptive_cross_entropy``: on CPU one autograd node, which writes the head's and every tail cluster's gradient
  straight into one (vocabulary x width) gradient of the word vectors;
- ``composed_adaptive_cross_entropy``: one fused output layer + cross-entropy per part, autograd joining their
  gradients (a zero-filled vocabulary x width gradient per slice of the word vectors, then their sum).

The embedding lookup of the step's tokens runs in both, so the tied gradient's accumulation is timed as training
does it. Targets follow Zipf's law over the frequency-ordered vocabulary, as in ``train_throughput.py``, so about
as many land in the tail as in text. The two alternate in rounds of ``--steps`` steps; the medians of the rounds
and their ratio are printed, with the ratio's range over the rounds (the machine's speed moves between rounds,
not within a pair).

    python benchmarks/clustered_loss.py [--threads 2] [--rounds 9] [--steps 20] [--models rnn lstm]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lmlab.config import load_train
from lmlab.models.adaptive_softmax import adaptive_cross_entropy, composed_adaptive_cross_entropy
from train_throughput import VOCAB, ZIPF

LOSSES = {"one node": adaptive_cross_entropy, "composed": composed_adaptive_cross_entropy}


def make_step(rows: int, width: int, cutoffs: list[int], loss_fn):
    """forward + backward of ``loss_fn`` on ``rows`` positions, through a tied embedding and one width x width layer
    (so the hidden states are a function of the word vectors, as in a model), gradients cleared afterwards."""
    torch.manual_seed(0)
    words = torch.nn.Parameter(torch.empty(VOCAB, width).uniform_(-0.1, 0.1))
    bias = torch.nn.Parameter(torch.zeros(VOCAB))
    cluster_weight = torch.nn.Parameter(torch.empty(len(cutoffs), width).uniform_(-0.1, 0.1))
    cluster_bias = torch.nn.Parameter(torch.zeros(len(cutoffs)))
    layer = torch.nn.Parameter(torch.randn(width, width) / width**0.5)
    tokens, targets = (torch.multinomial(ZIPF, rows, replacement=True) for _ in range(2))
    params = (words, bias, cluster_weight, cluster_bias, layer)

    def step():
        hidden = torch.tanh(F.embedding(tokens, words) @ layer)
        loss_fn(hidden, words, bias, cluster_weight, cluster_bias, targets, cutoffs).backward()
        for p in params:
            p.grad = None

    return step


def round_ms(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["rnn", "lstm"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; ms per forward + backward, medians of {args.rounds} "
          f"rounds of {args.steps} steps, the two alternating\n")
    print(f"{'preset':<8} {'rows x width':>13} {'cutoffs':>8} {'one node':>9} {'composed':>9} {'ratio':>6} {'range':>12}")
    for model in args.models:
        cfg = load_train(model, "cpu", [])
        cutoffs = list(cfg.model.output_cutoffs)
        if not cutoffs:
            print(f"{model:<8} the cpu preset has no clustered softmax: not timed")
            continue
        rows, width = cfg.data.bptt * cfg.data.batch_size, cfg.model.emb_size
        steps = {name: make_step(rows, width, cutoffs, fn) for name, fn in LOSSES.items()}
        for step in steps.values():  # warm-up: allocations, the logits buffer
            round_ms(step, 3)
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name].append(round_ms(step, args.steps))
        ratios = [a / b for a, b in zip(times["one node"], times["composed"])]
        one, composed = statistics.median(times["one node"]), statistics.median(times["composed"])
        print(f"{model:<8} {f'{rows} x {width}':>13} {str(cutoffs):>8} {one:>9.2f} {composed:>9.2f} "
              f"{statistics.median(ratios):>5.2f}x {f'{min(ratios):.2f}-{max(ratios):.2f}x':>12}")


if __name__ == "__main__":
    main()

"""Training throughput and MFU of each model, scratch and torch.nn side by side, in one run.

MFU = model FLOP/s ÷ the fp32 GEMM peak measured in this same run (a large square matmul), so the ratio
is fair to whatever machine runs it. Model FLOPs count matmuls only, forward + backward = 3 × forward:

- recurrent: per token 2·(in·G·H + H·G·H) per layer (G = 4 gates for the LSTM, 3 for the GRU, 1 for the RNN)
  + 2·H·V decoder;
- transformer: per token per layer 2·(4·d² + 2·d·d_ff) + 2·2·T·d attention (QKᵀ and AV over the full T×T
  matrix, which is what is computed), + 2·d·V for the output layer.

Each step is a full optimiser step (forward, cross-entropy, backward, clipping, SGD/AdamW update) on the
preset's batch shape.

    python benchmarks/train_throughput.py [--preset cpu] [--threads 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lmlab.config import load_train, to_dict
from lmlab.families import build_model
from lmlab.models import parameter_counts

VOCAB = 10_000
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def gemm_peak(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def flops_per_token(cfg: dict) -> float:
    m = cfg["model"]
    if m["arch"] == "transformer":
        d, ff, t, layers = m["d_model"], m["d_ff"], m["context_length"], m["n_layers"]
        forward = layers * (2 * (4 * d * d + 2 * d * ff) + 4 * t * d) + 2 * d * VOCAB
    else:
        gates = GATES[m["arch"]]
        h, e = m["hidden_size"], m["emb_size"]
        forward = sum(2 * ((e if k == 0 else h) * gates * h + h * gates * h) for k in range(m["num_layers"]))
        forward += 2 * h * VOCAB
    return 3 * forward


def step_throughput(cfg: dict, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(cfg["model"], VOCAB)
    opt = (torch.optim.SGD(model.parameters(), lr=1e-3) if cfg["optim"]["name"] == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-4))
    if cfg["model"]["arch"] == "transformer":
        shape = (cfg["data"]["batch_size"], cfg["model"]["context_length"])
    else:
        shape = (cfg["data"]["bptt"], cfg["data"]["batch_size"])
    x, y = torch.randint(0, VOCAB, shape), torch.randint(0, VOCAB, shape)
    state = None if cfg["model"]["arch"] == "transformer" else model.initial_state(shape[1], model.encoder.weight)

    def step():
        logits = model(x) if state is None else model(x, state)[0]
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return x.numel() * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = gemm_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 GEMM peak (2048³): {peak / 1e9:.1f} GFLOP/s")
    print(f"preset {args.preset}; one training step = forward + backward + clip + optimiser update\n")
    print(f"{'model':<12} {'impl':<8} {'params':>10} {'GFLOP/token':>12} {'tokens/s':>10} {'GFLOP/s':>8} {'MFU':>6}  scratch/nn time")
    for model in ("rnn", "gru", "lstm", "transformer"):
        results = {}
        for impl in ("nn", "scratch"):
            cfg = to_dict(load_train(model, args.preset))
            cfg["model"]["impl"] = impl
            params = parameter_counts(build_model(cfg["model"], VOCAB))["total"]
            tok_s = step_throughput(cfg, args.steps)
            flops = flops_per_token(cfg)
            results[impl] = tok_s
            ratio = f"{results['nn'] / tok_s:.2f}x" if impl == "scratch" else ""
            print(f"{model:<12} {impl:<8} {params:>10,} {flops / 1e9:>12.4f} {tok_s:>10,.0f} "
                  f"{flops * tok_s / 1e9:>8.1f} {flops * tok_s / peak:>6.1%}  {ratio}", flush=True)


if __name__ == "__main__":
    main()

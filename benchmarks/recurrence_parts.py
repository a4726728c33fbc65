"""What one scratch recurrent layer's window costs, against the matmuls it cannot avoid: the per-step GEMMs.

Each time step of a window runs one small GEMM forward (the state times W_hh^T: 20 x H @ H x G·H) and one
backward (the gates' gradient times W_hh: 20 x G·H @ G·H x H), and the window adds one large GEMM, W_hh's
gradient over all its steps (G·H x 700 @ 700 x H); everything else is element-wise work and operator dispatch on
20 x G·H elements. This prints, per ``cpu`` preset shape (35 steps x 20 columns; hidden 320 / 272 / 256 for the
RNN / GRU / LSTM), those GEMMs' time per step alone (the large one's share: a 35th) at 1 and 2 threads, and the whole
window's forward + backward per step at 2 threads (``recurrence_ab.window``, the installed lmlab's code; the LSTM
twice: with its compiled cell, the default, and with the tensor-operation cell): the gap between the two is what a
fused or differently scheduled loop could win, and the 1- against 2-thread times say whether the second thread
helps GEMMs this small.

    python benchmarks/recurrence_parts.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch
from recurrence_ab import BATCH, SHAPES, STEPS, window


def per_call_us(fn, calls: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean time of ``calls`` back-to-back calls, in microseconds."""
    for _ in range(calls):  # warm-up: allocator and thread pool
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def step_gemms(hidden: int, gates: int):
    """The forward and the backward per-step GEMM of one layer, with their outputs preallocated as the loops do,
    and W_hh's gradient over the window, which the backward pass forms once."""
    state, w_t = torch.randn(BATCH, hidden), torch.randn(hidden, gates * hidden)
    addend, out = torch.randn(BATCH, gates * hidden), torch.empty(BATCH, gates * hidden)
    d_gates, w = torch.randn(BATCH, gates * hidden), torch.randn(gates * hidden, hidden)
    d_addend, d_out = torch.randn(BATCH, hidden), torch.empty(BATCH, hidden)
    d_pre, states = torch.randn(STEPS * BATCH, gates * hidden), torch.randn(STEPS * BATCH, hidden)

    def per_step():
        torch.addmm(addend, state, w_t, out=out)
        torch.addmm(d_addend, d_gates, w, out=d_out)

    def weight_gradient():
        d_pre.t() @ states

    return per_step, weight_gradient


def gemm_us(per_step, weight_gradient, threads: int, rounds: int) -> float:
    torch.set_num_threads(threads)
    return per_call_us(per_step, 200, rounds) + per_call_us(weight_gradient, 20, rounds) / STEPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(f"torch {torch.__version__}; one layer, {STEPS} steps x {BATCH} columns; microseconds per time step, "
          f"medians of {args.rounds} rounds\n")
    print(f"{'model':<20} {'hidden':>6} {'GEMMs, 1 thread':>16} {'GEMMs, 2 threads':>17} {'2-thread gain':>14} "
          f"{'window, 2 threads':>18} {'GEMM share':>11}")
    rows = [("rnn", "rnn", True), ("gru", "gru", True), ("lstm", "lstm", True), ("lstm, tensor-op cell", "lstm", False)]
    for label, model, compiled_cell in rows:
        module, cls, hidden, gates = SHAPES[model]
        per_step, weight_gradient = step_gemms(hidden, gates)
        one, two = (gemm_us(per_step, weight_gradient, threads, args.rounds) for threads in (1, 2))
        recurrence = getattr(importlib.import_module(f"lmlab.models.{module}"), cls)
        whole = per_call_us(window(recurrence, model, compiled_cell), 10, args.rounds) / STEPS
        print(f"{label:<20} {hidden:>6} {one:>16.1f} {two:>17.1f} {one / two:>13.2f}x {whole:>18.1f} {two / whole:>11.0%}")


if __name__ == "__main__":
    main()

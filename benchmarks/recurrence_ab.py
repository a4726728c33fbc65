"""One layer's recurrence (forward + backward over one BPTT window) of the scratch RNN, GRU and LSTM, timed
against the same code from another source tree, alternating in one process.

A change to a recurrent loop moves the full training step by a few percent, less than this machine's speed
moves between runs of ``train_throughput.py``; timed alone and alternated with its baseline, the loop's own
gain is measurable. Shapes are the ``cpu`` presets' (35 steps x 20 columns; hidden 320 / 272 / 256).
Only each layer's own file is taken from the baseline tree; what it imports (``lmlab.models.recurrent_layer``,
the compiled LSTM cell of ``lmlab.models.kernels``) comes from the installed lmlab, so a change outside those files
is not compared. Each tree's LSTM runs as its layer does by default: with the compiled cell where its
``LSTMRecurrence`` takes one (from 2026-12-07), with tensor operations before.

    git worktree add /tmp/baseline <commit>
    python benchmarks/recurrence_ab.py --baseline /tmp/baseline/src [--threads 2] [--rounds 9]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import time
from pathlib import Path

import torch

STEPS, BATCH = 35, 20
SHAPES = {"rnn": ("rnn", "ElmanRecurrence", 320, 1), "gru": ("gru", "GRURecurrence", 272, 3),
          "lstm": ("lstm", "LSTMRecurrence", 256, 4)}


def load_recurrence(src: Path, model: str, tag: str):
    module, cls, _, _ = SHAPES[model]
    spec = importlib.util.spec_from_file_location(f"{module}_{tag}", src / "lmlab" / "models" / f"{module}.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return getattr(loaded, cls)


def window(recurrence, model: str, compiled_cell: bool = True):
    """A closure running one window forward and backward on fixed random inputs (the LSTM with its compiled cell
    where ``recurrence`` takes one and ``compiled_cell`` asks for it, as the layer's default does)."""
    _, _, hidden, gates = SHAPES[model]
    torch.manual_seed(0)
    xw = torch.randn(STEPS, BATCH, gates * hidden, requires_grad=True)
    w_hh = (torch.randn(gates * hidden, hidden) * 0.05).requires_grad_()
    h0 = torch.zeros(BATCH, hidden)
    if model == "lstm":
        inputs = (xw, h0, torch.zeros(BATCH, hidden), w_hh)
        if compiled_cell and "cell" in inspect.signature(recurrence.forward).parameters:
            from lmlab.models import kernels

            inputs += (kernels.lstm_cell(),)
    elif model == "gru":
        inputs = (xw, h0, w_hh, torch.zeros(gates * hidden, requires_grad=True))
    else:
        inputs = (xw, h0, w_hh)

    def run():
        recurrence.apply(*inputs)[0].sum().backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="the baseline's src folder")
    parser.add_argument("--current", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--windows", type=int, default=20, help="windows timed per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; one layer, {STEPS} x {BATCH}, forward + backward; "
          f"medians of {args.rounds} alternating rounds")
    for model in SHAPES:
        runs = {tag: window(load_recurrence(src, model, tag), model)
                for tag, src in (("baseline", args.baseline), ("current", args.current))}
        times = {tag: [] for tag in runs}
        for _ in range(args.rounds):
            for tag, run in runs.items():
                for _ in range(3):  # warm-up: allocator and thread pool
                    run()
                start = time.perf_counter()
                for _ in range(args.windows):
                    run()
                times[tag].append((time.perf_counter() - start) / args.windows * 1e3)
        base, cur = statistics.median(times["baseline"]), statistics.median(times["current"])
        print(f"{model:5s} baseline {base:6.2f} ms   current {cur:6.2f} ms   speed-up {base / cur:.3f}x")


if __name__ == "__main__":
    main()

"""Training throughput and MFU of each model, scratch and torch.nn side by side, in one run.

MFU = the model's FLOP/s in its fastest window of ``WINDOW`` (5) steps ÷ the fp32 GEMM peak measured in this same run (the
fastest reading of a large square matmul, taken before and after every model): the same statistic on both
sides, so the ratio is fair to whatever machine runs it. Model FLOPs count matmuls only, forward + backward = 3 × forward:

- recurrent: per token 2·(in·G·H + H·G·H) per layer, each layer at its own width (G = 4 gates for the LSTM, 3 for
  the GRU, 1 for the RNN) + 2·H_last·V decoder;
- transformer: per token per layer 2·(4·d² + 2·d·d_ff) + 2·2·T·d attention (QKᵀ and AV over the full T×T
  matrix, which is what is computed), + 2·d·V for the output layer;
- with a clustered softmax (``model.output_cutoffs``), the output layer's 2·d·V becomes 2·d·(head words + clusters)
  + 2·d·(each tail cluster's words × the share of targets in it): what is computed.

Token ids are drawn from Zipf's law over the frequency-ordered vocabulary (``ZIPF``), not uniformly, so that a
clustered softmax sees text-like targets; the full softmax's cost does not depend on them.

Each step is a full optimiser step (forward, cross-entropy, backward, clipping, and the preset's own SGD or AdamW
update, as ``lmlab train`` builds it) on the preset's batch shape, without DropConnect unless ``--weight-drop``
keeps each preset's (the LSTM's 0.2): both twins then draw one mask of the hidden-to-hidden weights per step, the
same function (tested), so the rows show what DropConnect costs each. The output layer and the cross-entropy run as
the models train them (one fused op on CPU, `lmlab.models.linear_cross_entropy`); ``--plain-loss`` times them as
``F.linear`` + ``F.cross_entropy`` instead, the baseline of that fusion, and ``--loss-chunk 128`` the fused op at
its earlier chunk size. ``--compile`` adds a row per model with the scratch model under ``torch.compile`` (its CPU
backend generates fused C++/OpenMP kernels for the element-wise chains). ``--profile`` prints, per model, where a
scratch step's time goes (torch.profiler self time, bucketed): matmuls (the FLOPs MFU counts), softmax and
cross-entropy over the vocabulary, the other element-wise and memory ops, the optimiser and clipping, and the
Python time between operators (the step's wall time less its operators' time).

    python benchmarks/train_throughput.py [--preset cpu] [--threads 2] [--steps 20] [--weight-drop] [--plain-loss]
                                          [--loss-chunk 128] [--compile] [--profile] [--set key=value ...]

``--set`` overrides every chosen model's preset as ``lmlab train --set`` does (e.g. ``--models rnn --set
model.emb_size=256 --set model.hidden_size=768``), to time a layout before training it.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from lmlab.config import load_train, to_dict
from lmlab.errors import LmlabError
from lmlab.families import build_model
from lmlab.models import linear_cross_entropy, parameter_counts
from lmlab.recipes.train import make_optimizer

VOCAB = 10_000
WINDOW = 5  # consecutive steps per timing window: tokens/s and MFU are the fastest window's


def gemm_peak(n: int = 2048, samples: int = 5, repeats: int = 3) -> float:
    """The machine's fp32 matmul rate: the best of ``samples`` timings of ``repeats`` n³ products each. One long
    timing averages in a shared machine's slow moments, and a peak read in one of them put a model above 100%."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    fastest = math.inf
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        fastest = min(fastest, time.perf_counter() - start)
    return 2 * n**3 * repeats / fastest


# Token ids of random text drawn from Zipf's law over frequency ranks (lmlab's vocabularies are ordered by
# frequency), so a clustered softmax sees a realistic share of targets outside its head: 83.5% of Zipf(1) draws fall
# in the 2,000 most frequent ids (PTB's training text: 86.9%), so the clustered rows are, if anything, pessimistic.
ZIPF = 1.0 / torch.arange(1, VOCAB + 1, dtype=torch.float64)
ZIPF /= ZIPF.sum()


def output_flops(model: torch.nn.Module, width: int) -> float:
    """Forward matmul FLOPs per token of the output layer: every word, or with the model's clusters the head's words
    and clusters plus each tail cluster's words times the share of (Zipf) targets that fall in it."""
    cutoffs = model.clusters.cutoffs if model.clusters is not None else []  # as built: cutoffs past VOCAB dropped
    if not cutoffs:
        return 2 * width * VOCAB
    bounds = cutoffs + [VOCAB]
    tails = sum(float(ZIPF[lo:hi].sum()) * (hi - lo) for lo, hi in zip(bounds, bounds[1:]))
    return 2 * width * (cutoffs[0] + len(cutoffs) + tails)


def flops_per_token(cfg: dict, model: torch.nn.Module) -> float:
    m = cfg["model"]
    if m["arch"] == "transformer":
        d, ff, t, layers = m["d_model"], m["d_ff"], m["context_length"], m["n_layers"]
        forward = layers * (2 * (4 * d * d + 2 * d * ff) + 4 * t * d) + output_flops(model, d)
    else:  # every layer's own shapes: tied, the last layer is as wide as the embedding
        forward = sum(2 * (layer.weight_ih_l0.numel() + layer.weight_hh_l0.numel()) for layer in model.layers)
        forward += output_flops(model, model.decoder.weight.size(1))
    return 3 * forward


MATMUL = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
          "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::linear", "aten::matmul")
SOFTMAX_CE = ("aten::logsumexp", "aten::exp_", "aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss_forward",
              "aten::nll_loss_backward", "aten::_softmax", "aten::_softmax_backward_data")


def make_step(cfg: dict, optim, compiled: bool = False, plain_loss: bool = False):
    """(one training step as a function, tokens per step) on random tokens of the preset's batch shape, with the
    optimiser a run of the preset trains with (``optim``: its typed optim config)."""
    torch.manual_seed(0)
    model = build_model(cfg["model"], VOCAB)
    opt = make_optimizer(model, optim)
    # Random tokens are not a language: at the presets' rates (SGD at 20 for the GRU and LSTM) a few updates on
    # them blow the logits up, and the loss's exp() then takes its slow underflow path (about 8x slower; a tenth
    # of the GRU's step in the profile), which real training does not reach (the committed checkpoints keep
    # logit - max above -32). At rate 0 the update does the same arithmetic and the weights stay where a run starts.
    for group in opt.param_groups:
        group["lr"] = 0.0
    if cfg["model"]["arch"] == "transformer":
        shape = (cfg["data"]["batch_size"], cfg["model"]["context_length"])
    else:
        shape = (cfg["data"]["bptt"], cfg["data"]["batch_size"])
    x, y = (torch.multinomial(ZIPF, shape[0] * shape[1], replacement=True).view(shape) for _ in range(2))
    state = None if cfg["model"]["arch"] == "transformer" else model.initial_state(shape[1], model.encoder.weight)
    forward = torch.compile(model) if compiled else model

    def step():
        if plain_loss:
            logits = forward(x) if state is None else forward(x, state)[0]
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        else:
            loss = forward(x, targets=y) if state is None else forward(x, state, targets=y)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.profiler.record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

    return step, x.numel()


def step_throughput(cfg: dict, optim, steps: int, compiled: bool = False, plain_loss: bool = False) -> tuple[float, float]:
    """(tokens/s over all ``steps``, tokens/s of the fastest window of ``WINDOW`` consecutive steps). The fastest
    window is the same statistic as the GEMM peak's fastest reading, so their ratio compares like with like on a
    machine whose speed moves; the mean is what a run of that length would see."""
    step, tokens = make_step(cfg, optim, compiled, plain_loss)
    for _ in range(3):  # warm-up (and, compiled, the compilation)
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    window = min(WINDOW, steps)
    fastest = min(sum(times[i:i + window]) for i in range(0, steps - window + 1, window))
    return tokens * steps / sum(times), tokens * window / fastest


def profile(cfg: dict, optim, steps: int, plain_loss: bool = False) -> dict[str, float]:
    """Share of a scratch step's wall time per bucket (see the module docstring)."""
    step, _ = make_step(cfg, optim, plain_loss=plain_loss)
    return profile_shares(step, steps, {"matmul": MATMUL, "softmax + cross-entropy": SOFTMAX_CE})


def profile_shares(step, steps: int, buckets: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """Run ``step`` (which wraps its clipping and update in record_function("optimizer")) under torch.profiler
    and share out every operator's self time: the optimiser (anything below that label), then the named
    ``buckets`` by operator name, the rest as element-wise and memory ops; the wall time no operator accounts
    for is Python and dispatch between operators."""
    for _ in range(3):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    seconds = dict.fromkeys((*buckets, "element-wise + memory", "optimizer + clip"), 0.0)
    for event in prof.events():
        if event.name == "optimizer" or event.self_cpu_time_total <= 0:
            continue
        parent, in_optimizer = event.cpu_parent, False
        while parent is not None and not in_optimizer:
            in_optimizer, parent = parent.name == "optimizer", parent.cpu_parent
        bucket = "optimizer + clip" if in_optimizer else next(
            (name for name, ops in buckets.items() if event.name in ops), "element-wise + memory")
        seconds[bucket] += event.self_cpu_time_total / 1e6
    seconds["Python + dispatch between ops"] = max(0.0, wall - sum(seconds.values()))
    return {k: v / wall for k, v in seconds.items()}


def print_profile(rows: dict[str, dict[str, float]], title: str) -> None:
    buckets = list(next(iter(rows.values())))
    print(f"\n{title}\n")
    print(f"{'':<22} " + " ".join(f"{b:>{max(9, len(b))}}" for b in buckets))
    for name, shares in rows.items():
        print(f"{name:<22} " + " ".join(f"{shares[b]:>{max(9, len(b))}.1%}" for b in buckets))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time each scratch model under torch.compile")
    parser.add_argument("--profile", action="store_true", help="print where a scratch step's time goes")
    parser.add_argument("--weight-drop", action="store_true",
                        help="keep each preset's DropConnect (model.weight_drop) instead of timing the plain recurrence")
    parser.add_argument("--plain-loss", action="store_true",
                        help="time the output layer and cross-entropy as F.linear + F.cross_entropy, not the fused op")
    parser.add_argument("--loss-chunk", type=int, default=linear_cross_entropy.CHUNK,
                        help="rows per chunk of the fused op (its baseline before 1,024 was 128)")
    parser.add_argument("--models", nargs="+", default=["rnn", "gru", "lstm", "transformer"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override every chosen model's preset, as in lmlab train (repeatable)")
    args = parser.parse_args()
    linear_cross_entropy.CHUNK = args.loss_chunk
    if args.threads:
        torch.set_num_threads(args.threads)
    peaks = [gemm_peak()]
    rows, profiles, skipped = [], {}, []
    for model in args.models:
        results = {}
        for impl in ("nn", "scratch", "compiled") if args.compile else ("nn", "scratch"):
            typed = load_train(model, args.preset, args.overrides)
            cfg = to_dict(typed)
            cfg["model"]["impl"] = "nn" if impl == "nn" else "scratch"
            if "weight_drop" in cfg["model"] and not args.weight_drop:
                cfg["model"]["weight_drop"] = 0.0
            try:
                built = build_model(cfg["model"], VOCAB)
            except LmlabError as error:  # a scratch-only option (model.layer_norm): time the scratch model alone
                skipped.append(f"{model} {impl}: not timed, {error}")
                continue
            params = parameter_counts(built)["total"]
            mean_tok_s, tok_s = step_throughput(cfg, typed.optim, args.steps, compiled=impl == "compiled",
                                                plain_loss=args.plain_loss)
            results[impl] = tok_s
            ratio = f"{results['nn'] / tok_s:.2f}x" if impl != "nn" and "nn" in results else ""
            rows.append((model, impl, params, flops_per_token(cfg, built), mean_tok_s, tok_s, ratio))
            if args.profile and impl == "scratch":
                profiles[model] = profile(cfg, typed.optim, max(3, args.steps // 2), args.plain_loss)
        peaks.append(gemm_peak())
    peak = max(peaks)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 GEMM peak (2048³, best of "
          f"{len(peaks)} readings before and after each model; they ranged {min(peaks) / 1e9:.1f}-{peak / 1e9:.1f}): "
          f"{peak / 1e9:.1f} GFLOP/s")
    fused = f"fused output layer + cross-entropy ({args.loss_chunk}-row chunks)"
    print(f"preset {args.preset}{''.join(' --set ' + o for o in args.overrides)}; one training step = forward + backward + clip + optimiser update; "
          f"{'DropConnect as each preset sets it' if args.weight_drop else 'no DropConnect'}; "
          f"{'F.linear + F.cross_entropy' if args.plain_loss else fused}\n")
    print(f"tokens/s, GFLOP/s, MFU and the ratio: the fastest window of {WINDOW} steps (as the peak is the fastest "
          "reading); mean: over all the steps\n")
    print(f"{'model':<12} {'impl':<8} {'params':>10} {'GFLOP/token':>12} {'mean tok/s':>10} {'tokens/s':>10} "
          f"{'GFLOP/s':>8} {'MFU':>6}  scratch/nn time")
    for model, impl, params, flops, mean_tok_s, tok_s, ratio in rows:
        print(f"{model:<12} {impl:<8} {params:>10,} {flops / 1e9:>12.4f} {mean_tok_s:>10,.0f} {tok_s:>10,.0f} "
              f"{flops * tok_s / 1e9:>8.1f} {flops * tok_s / peak:>6.1%}  {ratio}")
    for line in skipped:
        print(line)
    if profiles:
        print_profile(profiles, "where a scratch training step's wall time goes (torch.profiler self time; shares of the step)")

if __name__ == "__main__":
    main()

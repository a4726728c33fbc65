"""GPU readiness in one command (``make gpu-check``): every PTB model's ``gpu`` preset for a few hundred steps
with bf16 autocast, TF32 and ``torch.compile`` (and, for a third as many steps, the recurrent models' from-scratch
layers, which the ``gpu`` presets replace by cuDNN's), one fine-tuning run and one DPO run of a few steps, each with
its throughput and MFU against the GPU's bf16 matrix-multiply peak measured in the same run. Any error, CUDA-only
ones included, fails the check loudly (non-zero exit, the error printed). About 3-5 minutes on one H200.

    python scripts/gpu_check.py [--steps 300] [--model smollm2-135m] [--out runs/gpu-check] [--only finetune dpo]
    python scripts/gpu_check.py --device cpu --smoke      # the same code path on a CPU, tiny settings (tests)

MFU: PTB models count matmul FLOPs per token as benchmarks/train_throughput.py does (3 x forward); the
fine-tune counts 6 x parameters per token. A fine-tune or DPO step's tokens/s comes from its own log.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_throughput import VOCAB, flops_per_token  # noqa: E402

from lmlab import results  # noqa: E402
from lmlab.config import to_dict  # noqa: E402
from lmlab.families import build_model  # noqa: E402
from lmlab.recipes import dpo, finetune, train  # noqa: E402
from lmlab.training import rundir  # noqa: E402


def matmul_peak(device: str, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of a large square matrix product on ``device`` (the ceiling MFU is measured against)."""
    n = n if device.startswith("cuda") else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_ptb(arch: str, preset: str, device: str, steps: int, out: Path, peak: float,
              impl: str | None = None) -> dict:
    """``impl``: the preset's own implementation when None; "scratch" runs the from-scratch recurrent layers
    (hand-written backward passes) under the same bf16 autocast, without torch.compile: compiling unrolls their
    time loops, which took most of a 53-178 s check on an H200, and the kernels under test are the eager ones."""
    on_gpu = device.startswith("cuda")
    compiled = on_gpu and impl is None
    overrides = [f"train.device={device}", f"train.steps={steps}", "data.max_eval_tokens=20000",
                 f"train.amp={str(on_gpu).lower()}", f"train.compile={str(compiled).lower()}"]
    overrides += [f"model.impl={impl}"] if impl else []
    name = f"{arch} {impl}" if impl else arch
    run_dir = out / name.replace(" ", "-")
    cfg = train.configure(arch, preset, overrides)
    train.run(cfg, run_dir)
    rows = rundir.read_jsonl(run_dir / rundir.METRICS)
    tokens_per_s = sum(r["tokens_per_s"] * r["seconds"] for r in rows) / sum(r["seconds"] for r in rows)
    settings = to_dict(cfg)
    flops = flops_per_token(settings, build_model(settings["model"], VOCAB))
    final = results.read(run_dir / rundir.FINAL, results.TrainFinal)
    return {"check": f"train {name}", "tokens_per_s": tokens_per_s, "mfu": flops * tokens_per_s / peak,
            "valid_ppl": final.valid_ppl}


def check_finetune(model: str, preset: str, device: str, out: Path, peak: float) -> dict:
    cfg = finetune.configure(model, None, preset, [f"train.device={device}", "train.steps=5", "train.eval_every=5",
                                                   "data.valid_chunks=2"])
    final = finetune.run(cfg, out / "finetune")
    flops = 6 * final.params_total
    return {"check": f"finetune {model}", "tokens_per_s": final.train_tokens_per_s,
            "mfu": flops * final.train_tokens_per_s / peak, "valid_ppl": final.best_valid_ppl}


def check_dpo(model: str, preset: str, device: str, out: Path) -> dict:
    cfg = dpo.configure(model, "general", preset, [f"train.device={device}", "train.steps=2", "pairs.train_pairs=8",
                                                   "pairs.eval_pairs=4", "eval.pubmedqa_questions=4",
                                                   "eval.general_chars=2000", "eval.generations=1",
                                                   "eval.kl_samples=2"])
    after = dpo.run(cfg, out / "dpo")
    return {"check": f"dpo {model}", "tokens_per_s": float("nan"), "mfu": float("nan"),
            "valid_ppl": float("nan"), "steps": after.steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--smoke", action="store_true", help="smoke presets and 2 steps (the CPU test of this script)")
    parser.add_argument("--only", nargs="+", metavar="PREFIX",
                        help="run only the checks whose name starts with one of these (e.g. finetune dpo)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: FAILED: no CUDA device is visible to torch (check the driver and a CUDA build of torch)")
        return 1
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    preset, steps = ("smoke", 2) if args.smoke else ("gpu", args.steps)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    peak = matmul_peak(args.device, dtype)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"gpu-check on {name}: torch {torch.__version__}, {dtype} matmul peak {peak / 1e12:.1f} TFLOP/s; "
          f"preset {preset}, {steps} steps per PTB model", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    checks = [*((f"train {a}", lambda a=a: check_ptb(a, preset, args.device, steps, args.out, peak))
                for a in ("rnn", "gru", "lstm", "transformer")),
              *((f"train {a} scratch", lambda a=a: check_ptb(a, preset, args.device, max(steps // 3, 2), args.out,
                                                            peak, impl="scratch"))
                for a in ("rnn", "gru", "lstm")),
              (f"finetune {args.model}", lambda: check_finetune(args.model, preset, args.device, args.out, peak)),
              (f"dpo {args.model}", lambda: check_dpo(args.model, preset, args.device, args.out))]
    if args.only:
        checks = [(label, check) for label, check in checks if label.startswith(tuple(args.only))]
    rows, failed = [], 0
    for label, check in checks:
        started = time.perf_counter()
        try:
            row = check()
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the check fails as a whole
            failed += 1
            row = {"check": label, "error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        if "error" in row:
            print(f"FAILED {row['check']}: {row['error']}", flush=True)
        else:
            mfu = "–" if math.isnan(row["mfu"]) else f"{row['mfu']:.1%}"
            print(f"ok  {row['check']:<28} {row['tokens_per_s']:>12,.0f} tokens/s  MFU {mfu:>6}  "
                  f"{row['seconds']:.0f} s", flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps({"device": name, "peak_flops": peak, "rows": rows},
                                                        indent=2, default=str) + "\n", encoding="utf-8")
    print(f"gpu-check: {'FAILED' if failed else 'passed'} ({failed} of {len(rows)} checks failed); "
          f"{args.out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

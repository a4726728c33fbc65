"""A DPO beta sweep: the same start, pairs and steps at several betas; held-out preference accuracy against
the KL from the reference on the policy's own samples, as one plot and one JSON file.

    python scripts/dpo_beta_sweep.py --model runs/cpu/lora/model --pairs pubmed-spin --betas 0.05 0.1 0.5 \
        --out runs/beta_sweep [--preset cpu] [--set train.steps=40 …]

Each beta is an ordinary ``lmlab dpo`` run in OUT/beta<b>/ (pubmed-spin pairs are sampled once and cached);
OUT/beta_sweep.json holds, per beta, the held-out preference and implicit-reward accuracy with their 95%
intervals, the log-likelihood margin and both KL measures; OUT/beta_sweep.png plots accuracy against KL.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lmlab import results  # noqa: E402
from lmlab.cli import main as lmlab  # noqa: E402


def sweep(model: str, pairs: str, betas: list[float], out: Path, preset: str, overrides: list[str],
          lora: bool = True) -> list[dict]:
    rows = []
    for beta in betas:
        run = out / f"beta{beta:g}"
        if not (run / results.AFTER).is_file():
            args = ["dpo", "--model", model, "--pairs", pairs, "--preset", preset, "--out", str(run),
                    "--set", f"dpo.beta={beta}", *[x for o in overrides for x in ("--set", o)]]
            if lora:
                args.append("--lora")
            if lmlab(args) != 0:
                raise SystemExit(f"the run at beta {beta} failed: see its messages above")
        after = results.read(run / results.AFTER, results.PreferenceMeasurement)
        rows.append({"beta": beta, "pairs": after.pairs, "steps": after.steps,
                     "preference_acc": after.preference_acc, "preference_acc_ci95": after.ci95["preference_acc"],
                     "reward_acc": after.reward_acc, "reward_acc_ci95": after.ci95["reward_acc"],
                     "logp_margin": after.logp_margin, "kl_teacher_forced": after.kl_from_reference,
                     "kl_on_samples": after.kl_on_samples,
                     "change_in_preference_acc": (after.change_vs_before or {}).get("preference_acc")})
    out.mkdir(parents=True, exist_ok=True)
    (out / "beta_sweep.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    plot(rows, out / "beta_sweep.png", f"DPO beta sweep on {pairs} pairs, start {model}")
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=120)
    for r in rows:
        kl = r["kl_on_samples"]["exact"] if r["kl_on_samples"] else r["kl_teacher_forced"]
        low, high = r["preference_acc_ci95"]
        ax.errorbar([kl], [r["preference_acc"]], yerr=[[r["preference_acc"] - low], [high - r["preference_acc"]]],
                    fmt="o", capsize=3)
        ax.annotate(f"β={r['beta']:g}", (kl, r["preference_acc"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("KL(π ‖ π_ref) on the policy's own samples (nats/token)")
    ax.set_ylabel("held-out preference accuracy (95% CI)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", default="pubmed-spin")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.5])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--full", action="store_true", help="train every weight instead of LoRA adapters")
    a = parser.parse_args()
    for row in sweep(a.model, a.pairs, a.betas, a.out, a.preset, a.overrides, lora=not a.full):
        kl = row["kl_on_samples"]["exact"] if row["kl_on_samples"] else row["kl_teacher_forced"]
        print(f"beta {row['beta']:g}: preference accuracy {row['preference_acc']:.3f} "
              f"[{row['preference_acc_ci95'][0]:.3f}, {row['preference_acc_ci95'][1]:.3f}], KL {kl:.5f}")

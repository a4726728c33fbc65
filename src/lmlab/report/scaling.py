"""The scaling study's numbers: each architecture at several widths under one wall-time budget, and which
architecture and size is best for each budget (`lmlab run --only scaling`).

At a fixed budget a larger model is better per token but sees fewer tokens, so validation perplexity against
size is a U: the best size is where the two balance (as in Kaplan et al. 2020 and Hoffmann et al. 2022, here in
CPU-minutes instead of FLOPs). A power law ``ppl = a * N^-alpha`` is fitted per architecture and budget over
the sizes before the U turns up, when at least three points lie there; otherwise none is reported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lmlab import results  # noqa: E402
from lmlab.training import rundir  # noqa: E402


def width_overrides(arch: str, width: int) -> list[str]:
    """The preset's depth at another width: recurrent layers and word vectors of ``width`` units (tied), or a
    Transformer with d_model = ``width`` and a 4x feed-forward layer (heads as in the preset)."""
    if arch == "transformer":
        return [f"model.d_model={width}", f"model.d_ff={4 * width}"]
    return [f"model.emb_size={width}", f"model.hidden_size={width}"]


def tokens_per_step(config: dict) -> int:
    """Training tokens in one optimiser step of a recorded run config (context windows or BPTT windows)."""
    return config["data"]["batch_size"] * (config["model"].get("context_length") or config["data"]["bptt"])


def collect(layout: results.StudyLayout, models: list[str], widths: list[int], budgets: list[float]) -> list[dict]:
    rows = []
    for budget in budgets:
        for arch in models:
            for width in widths:
                run = layout.scaling_run(budget, arch, width)
                if not (run / rundir.FINAL).is_file():
                    continue
                final = results.read(run / rundir.FINAL, results.TrainFinal)
                config = final.config
                rows.append({"budget_minutes": budget, "model": arch, "width": width,
                             "parameters": final.parameters["total"],
                             "non_embedding": final.parameters["non_embedding"],
                             "steps": config["train"]["steps"], "tokens_seen": config["train"]["steps"] * tokens_per_step(config),
                             "minutes": final.train_valid_seconds / 60, "valid_ppl": final.valid_ppl,
                             "test_ppl": final.test_ppl})
    return rows


def power_law(points: list[tuple[float, float]]) -> dict | None:
    """Least squares of log ppl on log N over the points up to the lowest perplexity (the falling side of the
    U); None with fewer than three there."""
    points = sorted(points)
    best = min(range(len(points)), key=lambda i: points[i][1]) if points else 0
    falling = points[: best + 1]
    if len(falling) < 3:
        return None
    xs, ys = [math.log(n) for n, _ in falling], [math.log(p) for _, p in falling]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    total = sum((y - my) ** 2 for y in ys)
    return {"alpha": -slope, "a": math.exp(intercept), "r2": 1 - residual / total if total else 1.0,
            "points": len(falling)}


def summarize(rows: list[dict]) -> dict:
    """Per budget: the best (architecture, width); per budget and architecture: the best width and the fit."""
    out = {}
    for budget in sorted({r["budget_minutes"] for r in rows}):
        at = [r for r in rows if r["budget_minutes"] == budget]
        best = min(at, key=lambda r: r["valid_ppl"])
        per_model = {}
        for arch in dict.fromkeys(r["model"] for r in at):
            mine = [r for r in at if r["model"] == arch]
            top = min(mine, key=lambda r: r["valid_ppl"])
            per_model[arch] = {"best_width": top["width"], "best_valid_ppl": top["valid_ppl"],
                               "power_law": power_law([(r["parameters"], r["valid_ppl"]) for r in mine])}
        out[f"{budget:g}"] = {"best": {k: best[k] for k in ("model", "width", "parameters", "valid_ppl", "test_ppl")},
                              "models": per_model}
    return out


def table(rows: list[dict], summary: dict) -> str:
    lines = ["| budget | model | width | parameters | steps | tokens seen | valid ppl | test ppl |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        best = summary[f"{r['budget_minutes']:g}"]["best"]
        mark = " **best**" if (r["model"], r["width"]) == (best["model"], best["width"]) else ""
        lines.append(f"| {r['budget_minutes']:g} min | {r['model']} | {r['width']} | {r['parameters']:,} | "
                     f"{r['steps']:,} | {r['tokens_seen']:,} | {r['valid_ppl']:.2f}{mark} | {r['test_ppl']:.2f} |")
    lines += ["", "| budget | best model (width) | valid ppl | per model: best width, power-law fit ppl = a·N^-α |",
              "|---:|---|---:|---|"]
    for budget, s in summary.items():
        fits = "; ".join(f"{m}: w{v['best_width']} ({v['best_valid_ppl']:.1f}), "
                         + (f"α = {v['power_law']['alpha']:.3f}, R² = {v['power_law']['r2']:.3f} over "
                            f"{v['power_law']['points']} sizes" if v["power_law"] else "no fit (< 3 sizes before the minimum)")
                         for m, v in s["models"].items())
        lines.append(f"| {budget} min | {s['best']['model']} ({s['best']['width']}) | {s['best']['valid_ppl']:.2f} | {fits} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120, sharey=True)
    for (budget, arch) in dict.fromkeys((r["budget_minutes"], r["model"]) for r in rows):
        mine = sorted((r for r in rows if r["budget_minutes"] == budget and r["model"] == arch),
                      key=lambda r: r["parameters"])
        label = f"{arch}, {budget:g} min"
        axes[0].plot([r["parameters"] for r in mine], [r["valid_ppl"] for r in mine], "o-", label=label)
        axes[1].plot([r["tokens_seen"] for r in mine], [r["valid_ppl"] for r in mine], "o-", label=label)
    for ax, xlabel in zip(axes, ("parameters (tied embeddings counted once)", "training tokens seen in the budget")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("PTB validation perplexity (word)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Equal wall time per run: validation perplexity against size and tokens seen")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(rows: list[dict], folder: Path) -> dict:
    summary = summarize(rows)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scaling.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2) + "\n")
    (folder / "scaling.md").write_text(table(rows, summary))
    plot(rows, folder / "scaling.png")
    return summary

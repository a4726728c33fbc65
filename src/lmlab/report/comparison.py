"""The cross-domain comparison of word-level runs: ratios to the in-domain perplexity, which model degrades
least and most, as Markdown, CSV, a chart and a JSON summary."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.report.plots import plot_cross_domain


def write_comparison(results: list[dict], out: Path, in_domain: str = "ptb:test") -> dict:
    """cross_domain.{md,csv,png,json} in ``out``: ratios to the in-domain perplexity per model, and which
    model degrades least and most (geometric mean of the in-vocabulary perplexity ratio over new corpora)."""
    base = {r["model"]: r for r in results if r["corpus"] == in_domain}
    if not base:
        raise LmlabError(f"the comparison needs the in-domain corpus '{in_domain}' among the --corpus values")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        ref = base.get(r["model"])
        if ref is None:
            continue
        rows.append({"model": r["model"], "corpus": r["corpus"], "oov_rate": r["oov_rate"], "ppl": r["ppl"],
                     "ppl_in_vocab": r["ppl_in_vocab"], "ppl_ratio": r["ppl"] / ref["ppl"],
                     "ppl_in_vocab_ratio": r["ppl_in_vocab"] / ref["ppl_in_vocab"],
                     "kl_new_to_train": r["shift"]["kl_new_to_train"], "js": r["shift"]["js"]})
    degradation = {}
    for model in base:
        ratios = [row["ppl_in_vocab_ratio"] for row in rows if row["model"] == model and row["corpus"] != in_domain]
        if ratios:
            degradation[model] = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    summary = {"in_domain": in_domain, "mean_in_vocab_ratio": degradation}
    if degradation:
        summary["degrades_least"] = min(degradation, key=degradation.get)
        summary["degrades_most"] = max(degradation, key=degradation.get)
    with (out / "cross_domain.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md = ["| model | corpus | OOV rate | ppl | ppl ratio | ppl (in-vocab) | in-vocab ratio | KL(new‖train) | JS |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['model']} | {r['corpus']} | {r['oov_rate']:.1%} | {r['ppl']:.1f} | {r['ppl_ratio']:.2f} | "
           f"{r['ppl_in_vocab']:.1f} | {r['ppl_in_vocab_ratio']:.2f} | {r['kl_new_to_train']:.3f} | {r['js']:.3f} |"
           for r in rows]
    if degradation:
        md.append("")
        md.append(f"Geometric-mean in-vocabulary perplexity ratio (new / {in_domain}): "
                  + ", ".join(f"{m} {v:.2f}" for m, v in degradation.items())
                  + f". Degrades least: **{summary['degrades_least']}**; most: **{summary['degrades_most']}**.")
    md += ["", "Perplexity by how often the target word occurred in training (frequent >= 1000, medium 100-999, "
           "rare 1-99; share of targets in brackets):", "",
           "| model | corpus | frequent | medium | rare | <unk> |", "|---|---|---:|---:|---:|---:|"]
    md += [f"| {r['model']} | {r['corpus']} | " + " | ".join(
        f"{b['ppl']:.1f} ({b['share']:.0%})" for b in r["buckets"].values()) + " |"
        for r in results if r["model"] in base]
    (out / "cross_domain.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "cross_domain_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_cross_domain(rows, out / "cross_domain.png")
    return summary

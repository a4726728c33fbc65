"""One change at a time at equal wall time: several `lmlab train` runs of one model under the same time budget,
each differing from the preset by the overrides of its variant, and a table of what each change did.

    python scripts/ablation.py --model lstm --budget 10 --out runs/ablation/lstm --parallel 2 --threads 1 \
        --variant base --variant "batch 40:data.batch_size=40" --variant "weight drop 0.2:model.weight_drop=0.2"

A variant is ``NAME[:KEY=VALUE,KEY=VALUE…]`` (overrides as `--set` takes them; the first variant is the baseline
the others are compared with). Runs already finished in OUT/<name>/ are reused. Runs that share the machine
(``--parallel``) each get ``--threads`` threads; every row records both, since a budget buys fewer steps on a
busier machine. OUT/ablation.json holds every row and OUT/ablation.md the table.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lmlab.report.scaling import tokens_per_step


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    return name.strip(), [o.strip() for o in overrides.split(",") if o.strip()]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def train(model: str, preset: str, budget: float, threads: int, out: Path, overrides: list[str]) -> int:
    if (out / "final.json").is_file():
        return 0
    args = [sys.executable, "-m", "lmlab", "train", "--model", model, "--preset", preset, "--out", str(out),
            "--threads", str(threads), "--set", f"train.budget_minutes={budget:g}",
            *[x for o in overrides for x in ("--set", o)]]
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as log:  # not with_suffix: names may hold dots
        return subprocess.call(args, stdout=log, stderr=subprocess.STDOUT)


def row(name: str, overrides: list[str], out: Path, parallel: int, threads: int) -> dict:
    final = json.loads((out / "final.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    config = final["config"]
    steps = config["train"]["steps"]
    return {"variant": name, "overrides": overrides, "steps": steps,
            "epochs": steps * tokens_per_step(config) / final["tokens"]["train"],
            "tokens_per_s": sum(m["tokens_per_s"] for m in metrics) / len(metrics),
            "train_ppl": metrics[-1]["train_ppl"], "valid_ppl": final["valid_ppl"], "test_ppl": final["test_ppl"],
            "minutes": final["train_valid_seconds"] / 60, "parallel_runs": parallel, "threads": threads,
            "parameters": final["parameters"]["total"]}


def table(rows: list[dict], model: str, budget: float) -> str:
    base = rows[0]["valid_ppl"]
    lines = [(f"Ablation of `{model}` at {budget:g} minutes of training + validation each "
              f"({rows[0]['parallel_runs']} runs at a time, {rows[0]['threads']} thread(s) each); valid/test: "
              "word perplexity on PTB (OOV words scored as <unk>), best checkpoint."), "",
             "| variant | overrides | steps | epochs | tokens/s | train ppl | valid ppl | Δ valid vs base | test ppl |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {', '.join(f'`{o}`' for o in r['overrides']) or '(preset)'} | {r['steps']:,} "
                     f"| {r['epochs']:.2f} | {r['tokens_per_s']:,.0f} | {r['train_ppl']:.2f} | {r['valid_ppl']:.2f} "
                     f"| {r['valid_ppl'] - base:+.2f} | {r['test_ppl']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--budget", type=float, required=True, help="minutes of training + validation per run")
    p.add_argument("--variant", action="append", required=True, help="NAME[:KEY=VALUE,…]; the first is the base")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    variants = [parse_variant(v) for v in a.variant]
    runs = [a.out / slug(name) for name, _ in variants]
    with ThreadPoolExecutor(a.parallel) as pool:
        codes = list(pool.map(lambda v: train(a.model, a.preset, a.budget, a.threads, v[1], v[0][1]),
                              zip(variants, runs)))
    failed = [name for (name, _), code in zip(variants, codes) if code]
    rows = [row(name, overrides, run, a.parallel, a.threads) for (name, overrides), run in zip(variants, runs)
            if (run / "final.json").is_file()]
    if rows:
        (a.out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
        (a.out / "ablation.md").write_text(table(rows, a.model, a.budget))
        print(table(rows, a.model, a.budget))
    if failed:
        print(f"failed: {', '.join(failed)} (see OUT/<variant>.log)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

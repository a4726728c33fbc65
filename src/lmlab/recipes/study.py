"""lmlab run: the study pipeline. It only calls the other recipes.

Steps so far: ``train`` (RNN, LSTM and Transformer on PTB with one preset) -> ``eval`` (every model on the
study's corpora, with the cross-domain comparison) -> ``sample`` (the same prompts to every model) ->
``report`` (report.md and a self-contained report.html built from the files above).
A step whose outputs exist with the same config is skipped; an interrupted training resumes from last.pt.

Layout of the study directory::

    ptb/{rnn,lstm,transformer}/   training runs (see lmlab.recipes.train)
    ptb_table.md                  the perplexity table
    cross_domain/                 cross_domain.json (one object per run x corpus), .md, .csv, .png
    samples.json                  every sample with its statistics, and the summary per model and strategy
    report.md, report.html        the report
"""

from __future__ import annotations

import json
from pathlib import Path

from lmlab import rundir
from lmlab.config import PRESETS, RUNTIME_KEYS, config_differences, load_preset, load_study
from lmlab.errors import LmlabError
from lmlab.generation import SamplingSettings
from lmlab.models import FAMILIES
from lmlab.recipes import evaluate, sample, train
from lmlab.report.document import write_report
from lmlab.report.tables import perplexity_table

MODELS = tuple(FAMILIES)  # rnn, lstm, transformer
STEPS = ("train", "eval", "sample", "report")


def run(preset: str, out: Path, only: list[str] | None = None, skip: list[str] | None = None) -> None:
    if preset not in PRESETS:
        raise LmlabError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    for step in (only or []) + (skip or []):
        if step not in STEPS:
            raise LmlabError(f"unknown step '{step}': choose from {', '.join(STEPS)}")
    steps = [s for s in STEPS if (not only or s in only) and s not in (skip or [])]
    out = Path(out)
    study = load_study(preset)
    run_dirs = [out / "ptb" / m for m in MODELS]
    if "train" in steps:
        train_all(preset, out)
    if "eval" in steps:
        _once("eval", out / "cross_domain" / "step.json", study["eval"], lambda: cross_domain(run_dirs, study["eval"], out))
    if "sample" in steps:
        _once("sample", out / "samples.step.json", study["sample"], lambda: samples(run_dirs, study["sample"], out))
    if "report" in steps:  # cheap, and it must reflect whatever the other steps left: always rebuilt
        md_path, html_path = write_report(out, preset)
        print(f"[report] {md_path} and {html_path}")


def train_all(preset: str, out: Path) -> dict[str, dict]:
    finals = {}
    for model in MODELS:
        run_dir = out / "ptb" / model
        final_path = run_dir / rundir.FINAL
        expected = dict(load_preset(model, preset), preset=preset)
        if final_path.is_file():
            final = rundir.read_json(final_path)
            if config_differences(final["config"], expected) - RUNTIME_KEYS:
                raise LmlabError(f"{run_dir} holds a {model} run with another config: remove it or use another --out")
            print(f"[train {model}] done already: {final_path}")
        else:
            resume = (run_dir / rundir.LAST).is_file()
            print(f"[train {model}] {'resuming' if resume else 'training'} ({preset} preset) in {run_dir}", flush=True)
            final = train.run(model, preset, run_dir, resume=resume)
        finals[model] = final
    table = perplexity_table(finals)
    (out / "ptb_table.md").write_text(table + "\n", encoding="utf-8")
    print("\nPenn Treebank, word-level perplexity (10k vocabulary; <eos> counted; best-validation checkpoint)\n")
    print(table)
    return finals


def cross_domain(run_dirs: list[Path], cfg: dict, out: Path) -> None:
    print(f"[eval] {', '.join(cfg['corpora'])}", flush=True)
    results = evaluate.run(run_dirs, cfg["corpora"], compare=out / "cross_domain")
    rundir.write_json(out / "cross_domain" / "cross_domain.json", results)


def samples(run_dirs: list[Path], cfg: dict, out: Path) -> None:
    print(f"[sample] {len(cfg['prompts'])} prompts x {len(cfg['strategies'])} strategies", flush=True)
    settings = [SamplingSettings(**s, max_tokens=cfg["max_tokens"]) for s in cfg["strategies"]]
    sample.run(run_dirs, cfg["prompts"], settings, seed=cfg["seed"], samples=cfg["samples"], out=out / "samples.json")


def _once(name: str, marker: Path, cfg: dict, step) -> None:
    """Run ``step`` unless ``marker`` records that it already finished with this exact config."""
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == cfg:
        print(f"[{name}] done already")
        return
    step()
    marker.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_json(marker, cfg)

"""lmlab run: the study pipeline. It only calls the other recipes.

Steps: ``train`` (RNN, LSTM and Transformer on PTB with one preset) -> ``eval`` (every model on the
study's corpora, with the cross-domain comparison) -> ``sample`` (the same prompts to every model) ->
``finetune`` (the pretrained model on the domain corpus, full and LoRA, and the data-size experiment) ->
``ft-eval`` (the same harness before and after) -> ``dpo`` (each pair source, from the full fine-tune) ->
``report`` (report.md and a self-contained report.html built from the files above).
A step whose outputs exist with the same config is skipped; an interrupted training resumes from last.pt
(PTB models and fine-tunes); an interrupted DPO run starts over.

Layout of the study directory::

    ptb/{rnn,lstm,transformer}/   training runs (see lmlab.recipes.train)
    ptb_table.md                  the perplexity table
    cross_domain/                 cross_domain.json (one object per run x corpus), .md, .csv, .png
    samples.json                  every sample with its statistics, and the summary per model and strategy
    finetune/{full,lora}/         fine-tuning runs (lmlab.recipes.finetune) with before.json / after.json (ft-eval)
    finetune/sizes/docsN/         the data-size experiment: full fine-tunes on N training documents
    dpo/{general,pubmedqa}/       DPO runs (lmlab.recipes.dpo) with before.json / after.json
    report.md, report.html        the report
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from lmlab import rundir
from lmlab.config import PRESETS, RUNTIME_KEYS, apply_overrides, config_differences, load_preset, load_study
from lmlab.errors import LmlabError
from lmlab.generation import SamplingSettings
from lmlab.models import FAMILIES
from lmlab.recipes import dpo, evaluate, finetune, ft_eval, sample, train
from lmlab.report.document import write_report
from lmlab.report.tables import finetune_table, perplexity_table

MODELS = tuple(FAMILIES)  # rnn, lstm, transformer
STEPS = ("train", "eval", "sample", "finetune", "ft-eval", "dpo", "report")


def run(preset: str, out: Path, only: list[str] | None = None, skip: list[str] | None = None,
        overrides: list[str] = ()) -> None:
    if preset not in PRESETS:
        raise LmlabError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    for step in (only or []) + (skip or []):
        if step not in STEPS:
            raise LmlabError(f"unknown step '{step}': choose from {', '.join(STEPS)}")
    steps = [s for s in STEPS if (not only or s in only) and s not in (skip or [])]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _logged(out / "study.log"):
        print(f"[study] {time.strftime('%Y-%m-%d %H:%M:%S')} preset {preset}, steps {' '.join(steps)}", flush=True)
        _run_steps(preset, out, steps, overrides)


def _run_steps(preset: str, out: Path, steps: list[str], overrides: list[str]) -> None:
    study = apply_overrides(load_study(preset), list(overrides))
    run_dirs = [out / "ptb" / m for m in MODELS]
    if "train" in steps:
        train_all(preset, out)
    if "eval" in steps:
        _once("eval", out / "cross_domain" / "step.json", study["eval"], lambda: cross_domain(run_dirs, study["eval"], out))
    if "sample" in steps:
        _once("sample", out / "samples.step.json", study["sample"], lambda: samples(run_dirs, study["sample"], out))
    if "finetune" in steps:
        finetune_all(preset, study["finetune"], out / "finetune")
    if "ft-eval" in steps:
        evaluate_finetunes(preset, study["finetune"], out / "finetune")
    if "dpo" in steps:
        align(preset, study, out)
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
            # runs recorded before a preset gained a key ran with that key's old behaviour: compare shared keys
            _require_same_config(run_dir, final["config"], expected, RUNTIME_KEYS, f"a {model} run", shared_only=True)
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


def finetune_all(preset: str, cfg: dict, out: Path) -> None:
    """Full and LoRA fine-tunes, then the data-size experiment (full fine-tunes on N training documents)."""
    for mode in cfg["modes"]:
        _finetune_once(f"finetune {mode}", out / mode,
                       finetune.configure(cfg["model"], cfg["dataset"], preset, lora=mode == "lora"))
    sizes = cfg["sizes"]
    for docs in sizes["train_docs"]:
        _finetune_once(f"finetune {docs} docs", out / "sizes" / f"docs{docs}",
                       finetune.configure(cfg["model"], cfg["dataset"], preset,
                                          [*sizes["overrides"], f"data.train_docs={docs}"]))


def _finetune_once(name: str, run_dir: Path, cfg: dict) -> None:
    final_path = run_dir / rundir.FINAL
    if final_path.is_file():
        _require_same_config(run_dir, rundir.read_json(final_path)["config"], cfg, finetune.RESUMABLE_KEYS, "a fine-tune")
        print(f"[{name}] done already: {final_path}")
        return
    resume = (run_dir / rundir.CONFIG).is_file()
    print(f"[{name}] {'resuming' if resume else 'training'} in {run_dir}", flush=True)
    finetune.run(cfg, run_dir, resume=resume)


def evaluate_finetunes(preset: str, cfg: dict, out: Path) -> None:
    """ft-eval of the pretrained model (before.json, shared by every mode) and of each fine-tune (after.json)."""
    eval_cfg = ft_eval.configure(preset)
    base = out / "base.json"
    if not base.is_file() or _stale(rundir.read_json(base), eval_cfg, cfg["model"]):
        print(f"[ft-eval] {cfg['model']} (before)", flush=True)
        rundir.write_json(base, ft_eval.evaluate_model(cfg["model"], eval_cfg))
    results = {"before": rundir.read_json(base)}
    for mode in cfg["modes"]:
        run_dir = out / mode
        after = run_dir / "after.json"
        if not (run_dir / rundir.FINAL).is_file():
            raise LmlabError(f"{run_dir} has no finished fine-tune: run the finetune step first")
        if not after.is_file() or _stale(rundir.read_json(after), eval_cfg, str(run_dir / finetune.MODEL_DIR)):
            print(f"[ft-eval] {mode} fine-tune (after)", flush=True)
            rundir.write_json(after, ft_eval.evaluate_model(str(run_dir / finetune.MODEL_DIR), eval_cfg))
        else:
            print(f"[ft-eval {mode}] done already")
        rundir.write_json(run_dir / "before.json", results["before"])
        results[mode] = rundir.read_json(after)
    (out / "comparison.md").write_text(finetune_table(results) + "\n", encoding="utf-8")


def _require_same_config(run_dir: Path, recorded: dict, expected: dict, ignored: set, what: str,
                         shared_only: bool = False) -> None:
    """A finished run is reused only if it ran this config (up to keys that do not change the result)."""
    if config_differences(recorded, expected, shared_only=shared_only) - ignored:
        raise LmlabError(f"{run_dir} holds {what} with another config: remove it or use another --out")


def _stale(result: dict, eval_cfg: dict, model: str) -> bool:
    return result.get("settings") != eval_cfg or result.get("model") != model


def align(preset: str, study: dict, out: Path) -> None:
    """DPO from the chosen starting model, once per pair source; a run without after.json starts over."""
    cfg = study["dpo"]
    start = study["finetune"]["model"] if cfg["start"] == "base" else str(out / "finetune" / cfg["start"] / finetune.MODEL_DIR)
    for source in cfg["sources"]:
        run_dir = out / "dpo" / source.replace(":", "_").replace("/", "_")
        dpo_cfg = dpo.configure(start, source, preset)
        if (run_dir / "after.json").is_file():
            _require_same_config(run_dir, rundir.read_json(run_dir / rundir.CONFIG), dpo_cfg, {("train", "threads")},
                                 "a DPO run")
            print(f"[dpo {source}] done already")
            continue
        if run_dir.exists():
            shutil.rmtree(run_dir)  # DPO does not resume: an interrupted run starts over
        print(f"[dpo {source}] from {start}", flush=True)
        dpo.run(dpo_cfg, run_dir)


class _Tee:
    """A stream that writes to the terminal and to the study log."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text):
        self.log.write(text)
        return self.stream.write(text)

    def flush(self):
        self.log.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def _logged(path: Path):
    """Everything the study prints (progress bars included) also goes to ``path``, appended run after run."""
    with path.open("a", encoding="utf-8") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err


def _once(name: str, marker: Path, cfg: dict, step) -> None:
    """Run ``step`` unless ``marker`` records that it already finished with this exact config."""
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == cfg:
        print(f"[{name}] done already")
        return
    step()
    marker.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_json(marker, cfg)

"""lmlab run: the study pipeline. It only calls the other recipes, through one step runner.

Steps: ``train`` (each PTB architecture of the study config with one preset) -> ``scaling`` (architectures at
several widths under equal wall-time budgets) -> ``eval`` (every model on the
study's corpora, with the cross-domain comparison) -> ``sample`` (the same prompts to every model) ->
``finetune`` (the pretrained model on the domain corpus in each mode, and the data-size experiment) ->
``ft-eval`` (the same harness before and after) -> ``dpo`` (each pair source, from the chosen start) -> ``rl``
(GRPO on PubMedQA verdicts) ->
``report`` (report.md and a self-contained report.html built from the result files).

One rule decides what a step does (:class:`Steps`): a unit whose result file exists and was made with the same
config (up to runtime keys) is done and skipped; a run directory with resume state (last.pt) resumes; anything
else starts over. The eval and sample steps keep each model's results while they were made from its current
training, and redo only the rest. Paths come from :class:`lmlab.results.StudyLayout`; the whole run is logged to
study.log.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from lmlab import results
from lmlab.config import PRESETS, StudyConfig, changed_keys, load_study, to_dict
from lmlab.errors import LmlabError
from lmlab.generation import SamplingSettings
from lmlab.recipes import dpo, evaluate, finetune, ft_eval, rl, sample, train
from lmlab.report.comparison import write_comparison
from lmlab.report.document import write_report
from lmlab.report import scaling
from lmlab.report.tables import perplexity_table
from lmlab.training import rundir

log = logging.getLogger("lmlab")
STEPS = ("train", "scaling", "eval", "sample", "finetune", "ft-eval", "dpo", "rl", "report")


def run(preset: str, out: Path, only: list[str] | None = None, skip: list[str] | None = None,
        overrides: list[str] = ()) -> None:
    if preset not in PRESETS:
        raise LmlabError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    for step in (only or []) + (skip or []):
        if step not in STEPS:
            raise LmlabError(f"unknown step '{step}': choose from {', '.join(STEPS)}")
    steps = [s for s in STEPS if (not only or s in only) and s not in (skip or [])]
    study = load_study(preset, list(overrides))
    layout = results.StudyLayout(out)
    layout.root.mkdir(parents=True, exist_ok=True)
    with _logged(layout.log):
        log.info("[study] %s preset %s, steps %s", time.strftime("%Y-%m-%d %H:%M:%S"), preset, " ".join(steps))
        runner = Steps(layout)
        for step in steps:
            STEP_FUNCTIONS[step](runner, study, preset)


class Steps:
    """The one skip/resume rule of the study: a unit is done when its result exists and records the config that
    is asked for now (up to the keys the schema marks runtime); otherwise it runs, resuming from last.pt where
    its run directory holds one. Two kinds of unit apply it, each recording its config in its own place: a run
    directory (config.json) and an ft-eval result (the settings and model it holds)."""

    def __init__(self, layout: results.StudyLayout):
        self.layout = layout

    @staticmethod
    def skip(name: str, where: Path) -> None:
        log.info("[%s] done already: %s", name, where)

    def run_dir(self, name: str, run_dir: Path, cfg, result: str, start: Callable[[bool], Any],
                resumable: bool = True, made_from: str | None = None) -> None:
        """A unit that owns a run directory; its result file is ``run_dir/result``. A finished run made with
        another config is never overwritten: that is an error naming the keys. ``made_from`` names a start model
        that another unit of the study trained (:func:`_made_from`): its config holds only that model's path, so
        a run made from an earlier training of it is stale and starts over."""
        record = run_dir / results.MADE_FROM
        if made_from and record.is_file() and rundir.read_json(record) != made_from:
            log.info("[%s] its start model was trained again since: starting over", name)
            shutil.rmtree(run_dir)
        if (run_dir / result).is_file():
            # runs recorded before a preset gained a key ran with that key's old behaviour: compare shared keys
            changed = changed_keys(rundir.read_json(run_dir / rundir.CONFIG), cfg, shared_only=True)
            if changed:
                raise LmlabError(f"{run_dir} holds a run made with another config ({', '.join(changed)}): remove "
                                 "it or use another --out")
            if made_from and not record.is_file():  # recorded before this check: taken as made from this start
                rundir.write_json(record, made_from)
            return self.skip(name, run_dir / result)
        resume = resumable and (run_dir / rundir.LAST).is_file()
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted run without resume state starts over
        log.info("[%s] %s in %s", name, "resuming" if resume else "starting", run_dir)
        if made_from:
            run_dir.mkdir(parents=True, exist_ok=True)
            rundir.write_json(record, made_from)
        start(resume)

    def evaluation(self, name: str, path: Path, model: str, settings, work: Callable[[], results.ModelEvaluation]):
        """An ft-eval result, which records the settings and the model it was made with."""
        return self._evaluated(name, path, model, to_dict(settings), results.ModelEvaluation, work)

    def task_evaluation(self, name: str, path: Path, model: str, settings, shots: list[int],
                        work: Callable[[], results.TaskEvaluation]):
        """A task fine-tune's PubMedQA scores, which record their settings and model the same way."""
        return self._evaluated(name, path, model, ft_eval.task_settings(settings, shots), results.TaskEvaluation,
                               work)

    def _evaluated(self, name: str, path: Path, model: str, settings: dict, cls, work):
        existing = results.read_if_present(path, cls)
        if existing and existing.settings == settings and existing.model == model:
            self.skip(name, path)
            return existing  # another model or other settings: evaluate again
        log.info("[%s] %s", name, model)
        evaluated = work()
        results.write(path, evaluated)
        return evaluated


def train_step(runner: Steps, study: StudyConfig, preset: str) -> None:
    layout = runner.layout
    for arch in study.train.models:
        cfg = train.configure(arch, preset)
        run_dir = layout.ptb_run(arch)
        train.keep_recorded_plan(cfg, run_dir)
        runner.run_dir(f"train {arch}", run_dir, cfg, rundir.FINAL, lambda resume, cfg=cfg, run_dir=run_dir: train.run(cfg, run_dir, resume))
    finals = {arch: results.read(layout.ptb_run(arch) / rundir.FINAL, results.TrainFinal) for arch in study.train.models}
    table = perplexity_table(finals)
    layout.ptb_table.write_text(table + "\n", encoding="utf-8")
    log.info("\nPenn Treebank, word-level perplexity (10k vocabulary; <eos> counted; best-validation checkpoint)\n\n%s",
             table)


def scaling_step(runner: Steps, study: StudyConfig, preset: str) -> None:
    """Every (budget, architecture, width) as a budgeted `lmlab train` run, then the table, plot and fits."""
    layout, s = runner.layout, study.scaling
    for budget in s.budgets:
        for arch in s.models:
            for width in s.widths:
                cfg = train.configure(arch, preset, [*s.overrides, *scaling.width_overrides(arch, width),
                                                     f"train.budget_minutes={budget:g}"])
                run_dir = layout.scaling_run(budget, arch, width)
                train.keep_recorded_plan(cfg, run_dir)
                runner.run_dir(f"scaling {arch} w{width} {budget:g} min", run_dir, cfg, rundir.FINAL,
                               lambda resume, cfg=cfg, run_dir=run_dir: train.run(cfg, run_dir, resume))
    rows = scaling.collect(layout, s.models, s.widths, s.budgets)
    scaling.write(rows, layout.scaling)
    log.info("\nScaling at equal wall time (PTB validation perplexity, word)\n\n%s",
             (layout.scaling / "scaling.md").read_text())


def eval_step(runner: Steps, study: StudyConfig, preset: str) -> None:
    """Every PTB model on every corpus. A result is kept while it was made from the model's current training (its
    ``made_from``, the digest of final.json), so a retrained model, or an added corpus, is the only thing scored
    again: the other models' checkpoints need not be present."""
    layout, cfg = runner.layout, study.eval
    path = layout.cross_domain / "cross_domain.json"
    previous = rundir.read_json(path) if path.is_file() else []
    rows = evaluate.run([layout.ptb_run(a) for a in study.train.models], cfg.corpora, previous=previous)
    if rows == previous:
        return runner.skip("eval", path)
    log.info("[eval] %d results on %s", len(rows), ", ".join(cfg.corpora))
    layout.cross_domain.mkdir(parents=True, exist_ok=True)
    rundir.write_json(path, rows)
    summary = write_comparison(rows, layout.cross_domain)
    log.info("comparison written to %s; degrades least: %s, most: %s", layout.cross_domain,
             summary.get("degrades_least"), summary.get("degrades_most"))


def sample_step(runner: Steps, study: StudyConfig, preset: str) -> None:
    """The same prompts to every PTB model. Samples are kept while made from the model's current training, and
    judged again only where the judge (the best other model) or its training changed."""
    layout, cfg = runner.layout, study.sample
    previous = rundir.read_json(layout.samples) if layout.samples.is_file() else {"samples": []}
    settings = [SamplingSettings(**s, max_tokens=cfg.max_tokens) for s in cfg.strategies]
    result = sample.run([layout.ptb_run(a) for a in study.train.models], cfg.prompts, settings, seed=cfg.seed,
                        samples=cfg.samples, previous=previous["samples"])
    if result == previous:  # the same samples and the same summary of them (a new statistic rewrites the file)
        return runner.skip("sample", layout.samples)
    log.info("[sample] %d prompts x %d strategies", len(cfg.prompts), len(cfg.strategies))
    rundir.write_json(layout.samples, result)


def finetune_step(runner: Steps, study: StudyConfig, preset: str) -> None:
    """Each model's domain fine-tunes (one per mode), the data-size experiment (the first model: full fine-tunes
    on N training documents), then each model's PubMedQA task fine-tunes from each starting point."""
    layout, f = runner.layout, study.finetune
    units = [(f"finetune {model} {mode}", layout.finetune_run(model, mode),
              finetune.configure(model, f.dataset, preset, f.overrides, lora=mode == "lora"))
             for model in f.models for mode in f.modes]
    units += [(f"finetune {docs} docs", layout.size_run(docs),
               finetune.configure(f.models[0], f.dataset, preset, [*f.sizes.overrides, f"data.train_docs={docs}"]))
              for docs in f.sizes.train_docs]
    for name, run_dir, cfg in units:
        runner.run_dir(name, run_dir, cfg, rundir.FINAL,
                       lambda resume, run_dir=run_dir, cfg=cfg: finetune.run(cfg, run_dir, resume))
    for model in f.models:  # after the domain fine-tunes they may start from, which may have just been trained
        for start in f.task.starts:
            for mode in f.task.modes:
                cfg = finetune.configure(_start_model(layout, study, model, start), None, preset, f.task.overrides,
                                         lora=mode == "lora", task="pubmedqa")
                run_dir = layout.task_run(model, start, mode)
                runner.run_dir(f"task {model} from {start} {mode}", run_dir, cfg, rundir.FINAL,
                               lambda resume, run_dir=run_dir, cfg=cfg: finetune.run(cfg, run_dir, resume),
                               made_from=_made_from(layout, model, start))


def _start_model(layout: results.StudyLayout, study: StudyConfig, model: str, start: str) -> str:
    """``base``: the pretrained model itself; a mode: that domain fine-tune's weights (which must exist)."""
    if start == "base":
        return model
    if start not in study.finetune.modes:
        raise LmlabError(f"start '{start}' is neither 'base' nor one of finetune.modes ({', '.join(study.finetune.modes)})")
    return str(layout.finetune_run(model, start) / results.MODEL_DIR)


def _made_from(layout: results.StudyLayout, model: str, start: str) -> str | None:
    """Which training of a start model a run is made from: None for the pretrained model (its name says it), else
    the digest of that domain fine-tune's final.json, which each new training of it rewrites."""
    if start == "base":
        return None
    return rundir.final_digest(layout.finetune_run(model, start))


def ft_eval_step(runner: Steps, study: StudyConfig, preset: str) -> None:
    """ft-eval of each pretrained model (shared by its fine-tunes) and of each domain fine-tune; PubMedQA alone
    for each task fine-tune. The tables over all of them (comparison.md, qa.json) are the report step's: they
    gather every result present, also those of runs made by earlier invocations with other model lists."""
    layout, f = runner.layout, study.finetune
    cfg = ft_eval.configure(preset)
    for model in f.models:
        before = runner.evaluation(f"ft-eval {model}", layout.base_evaluation(model), model, cfg,
                                   lambda model=model: ft_eval.evaluate_model(model, cfg))
        for mode in f.modes:
            run_dir = _finished(layout.finetune_run(model, mode))
            trained = str(run_dir / results.MODEL_DIR)
            runner.evaluation(f"ft-eval {model} {mode}", run_dir / results.AFTER, trained, cfg,
                              lambda m=trained: ft_eval.evaluate_model(m, cfg))
            results.write(run_dir / results.BEFORE, before)
        for start in f.task.starts:
            for mode in f.task.modes:
                run_dir = _finished(layout.task_run(model, start, mode))
                trained = str(run_dir / results.MODEL_DIR)
                runner.task_evaluation(f"PubMedQA {model} task from {start} {mode}", run_dir / results.TASK_SCORES,
                                       trained, cfg, f.task.shots,
                                       lambda m=trained: ft_eval.evaluate_task_model(m, cfg, f.task.shots))


def _finished(run_dir: Path) -> Path:
    if not (run_dir / rundir.FINAL).is_file():
        raise LmlabError(f"{run_dir} has no finished fine-tune: run the finetune step first")
    return run_dir


def dpo_step(runner: Steps, study: StudyConfig, preset: str) -> None:
    """DPO from the chosen start (the first model), once per pair source; DPO does not resume."""
    layout, d = runner.layout, study.dpo
    model = study.finetune.models[0]
    start, made_from = _start_model(layout, study, model, d.start), _made_from(layout, model, d.start)
    for source in d.sources:
        cfg, run_dir = dpo.configure(start, source, preset), layout.dpo_run(source)
        runner.run_dir(f"dpo {source}", run_dir, cfg, results.AFTER, lambda _, cfg=cfg, run_dir=run_dir:
                       dpo.run(cfg, run_dir), resumable=False, made_from=made_from)


def rl_step(runner: Steps, study: StudyConfig, preset: str) -> None:
    """GRPO from the chosen start (the first model); like DPO, it does not resume."""
    model = study.finetune.models[0]
    start = _start_model(runner.layout, study, model, study.rl.start)
    cfg, run_dir = rl.configure(start, preset), runner.layout.rl_run
    runner.run_dir("rl", run_dir, cfg, results.AFTER, lambda _: rl.run(cfg, run_dir), resumable=False,
                   made_from=_made_from(runner.layout, model, study.rl.start))


def report_step(runner: Steps, study: StudyConfig, preset: str) -> None:
    """Cheap, and it must reflect whatever the other steps left: always rebuilt."""
    md_path, html_path = write_report(runner.layout, study, preset)
    log.info("[report] %s and %s", md_path, html_path)


STEP_FUNCTIONS = {"train": train_step, "scaling": scaling_step, "eval": eval_step, "sample": sample_step, "finetune": finetune_step,
                  "ft-eval": ft_eval_step, "dpo": dpo_step, "rl": rl_step, "report": report_step}


@contextlib.contextmanager
def _logged(path: Path):
    """Everything the study logs also goes to ``path``, appended run after run."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()

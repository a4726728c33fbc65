"""lmlab train: a word-level language model on a corpus, with per-epoch perplexity, checkpoints and resume.

The steps, top to bottom: config -> runtime -> data -> model (its family) -> optimiser and schedule -> epochs
(train, validate, checkpoint, anneal/stop) -> test with the best weights -> final.json and curves.png.

Run directory (lmlab.training.rundir): config.json, vocab.txt, metrics.jsonl (one line per epoch), last.pt
(resume), best.pt (lowest validation loss), final.json (lmlab.results.TrainFinal), curves.png. With
``optim.average_from`` the run also keeps the mean of its weights over the end of training (uniform, or an
exponential moving average with ``optim.average_decay``; lmlab.training.averaging), validates it beside the raw
weights and keeps the better of the two.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lmlab import results
from lmlab.config import TrainConfig, load_train, to_dict
from lmlab.data.batching import lm_pairs
from lmlab.data.word_corpus import load_word_corpus
from lmlab.errors import LmlabError
from lmlab.families import family_of
from lmlab.metrics.perplexity import perplexity
from lmlab.models import kernels, parameter_counts
from lmlab.report.plots import plot_curves
from lmlab.training import budget, checkpoint, lifecycle, rundir, runtime, schedule
from lmlab.training.averaging import WeightAverage
from lmlab.training.logger import MetricsLogger
from lmlab.training.progress import Best, diverged
from lmlab.training.step import optimizer_step

log = logging.getLogger("lmlab")


class Diverged(Exception):
    pass


def configure(model: str, preset: str, overrides: list[str] = ()) -> TrainConfig:
    return load_train(model, preset, overrides)


def keep_recorded_plan(cfg: TrainConfig, out: Path) -> None:
    """A budgeted run's plan, once made, is its step count and its re-plans (config.json): a resume, or a study
    that compares a rerun with the finished run, keeps them instead of probing again, and keeps re-planning if
    the run did. A plan given on the command line (``train.steps`` or ``train.plan`` other than the recorded
    one) is replayed as it is, never re-planned. Calling this twice (a study, then ``run``) changes nothing."""
    t, recorded = cfg.train, Path(out) / rundir.CONFIG
    if t.plan:  # a given plan's total is the run's steps, as a replay's config.json records them
        _check_plan(t)
    made = rundir.read_json(recorded)["train"] if recorded.is_file() else {}
    if made and t.budget_minutes and not (t.steps or t.plan):
        t.steps, t.plan, t.replan = made.get("steps", 0), made.get("plan", []), made.get("replan", False)
    elif t.steps or t.plan:
        t.replan = (t.steps, t.plan) == (made.get("steps"), made.get("plan")) and made.get("replan", False)


def run(cfg: TrainConfig, out: Path, resume: bool = False) -> results.TrainFinal | None:
    out = Path(out)
    if resume or cfg.train.steps or cfg.train.plan:
        keep_recorded_plan(cfg, out)
    family = family_of(cfg.model.arch)
    rt = runtime.setup(cfg.train.device, cfg.train.threads)
    resume = lifecycle.prepare(out, cfg, resume, rt.is_main)
    try:
        return _train(cfg, out, resume, family, rt)
    except BaseException:
        lifecycle.abandon(out, rt.is_main)
        raise
    finally:
        runtime.teardown(rt)


@dataclass
class _Run:
    """Everything one training run holds, so the steps below take one argument."""

    cfg: TrainConfig
    out: Path
    family: object
    rt: runtime.Runtime
    corpus: object
    streams: dict
    net: torch.nn.Module
    train_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    metrics: MetricsLogger
    best: Best
    average: WeightAverage
    progress: dict = field(default_factory=lambda: {"epoch": 0, "step": 0, "first_loss": None, "elapsed": 0.0})

    def nll(self, split: str, net: torch.nn.Module | None = None) -> tuple[float, int]:
        values = self.family.token_nlls(self.net if net is None else net, *self.streams[split],
                                        **self.family.score_settings(self.cfg.data))
        return float(values.sum()), values.numel()


def _train(cfg: TrainConfig, out: Path, resume: bool, family, rt) -> results.TrainFinal | None:
    run = _setup(cfg, out, family, rt)
    if resume:
        _restore(run)
    counts = parameter_counts(run.net)
    log.info("%s (%s) on %s: %s parameters (%s without embeddings), vocabulary %s, %s training tokens, "
             "%d steps/epoch, device %s%s", cfg.model.arch, cfg.model.impl, cfg.data.corpus, f"{counts['total']:,}",
             f"{counts['non_embedding']:,}", f"{len(run.corpus.vocab):,}", f"{run.streams['train'][1].numel():,}",
             run.steps_per_epoch, rt.device, f", {rt.world_size} processes" if rt.distributed else "")
    status, divergence = _epochs(run)
    if rt.is_main and status == "finished":  # (a run that stopped early has not spent its plan)
        _report_plan_against_budget(cfg.train, run.progress["elapsed"])
    final = None
    if rt.is_main and (out / rundir.BEST).is_file():
        final = _finish(run, counts, status)
    run.metrics.close()
    if status == "diverged":
        kept = f"; the best epoch's checkpoint and final.json are kept in {out}" if final else ""
        raise LmlabError(f"training diverged ({divergence}): lower optim.lr or optim.clip and retrain{kept}")
    return final


def _replan(run: _Run, step_seconds: float, valid_seconds: float) -> None:
    """Count again the steps that fit what is left of the budget, at the speed the machine ran the last epoch
    at (lmlab.training.budget): if they moved, the plan changes from this step on."""
    t, step = run.cfg.train, run.progress["step"]
    measured = runtime.all_reduce_sum(run.rt, [step_seconds, valid_seconds, run.progress["elapsed"]])
    step_seconds, valid_seconds, elapsed = (v / run.rt.world_size for v in measured)
    total = budget.replanned_steps(60 * t.budget_minutes, elapsed, step, t.steps, step_seconds, valid_seconds,
                                   run.steps_per_epoch)
    if total is None:
        return
    log.info("re-planned at step %d: %.4f s/step and %.1f s per validation over the last epoch leave %.1f of %g "
             "min for %d more steps (%d in all, was %d)", step, step_seconds, valid_seconds,
             t.budget_minutes - elapsed / 60, t.budget_minutes, total - step, total, t.steps)
    run.sched.lr_lambdas[0].replan(step, total)
    _set_plan(run, [*t.plan, [step, total]])
    if run.rt.is_main:
        rundir.write_json(run.out / rundir.CONFIG, to_dict(run.cfg))


def _set_plan(run: _Run, plan: list[list[int]]) -> None:
    """The steps, epochs and averaging start that follow from a plan."""
    t, o = run.cfg.train, run.cfg.optim
    t.plan, t.steps = plan, plan[-1][1]
    t.epochs = math.ceil(t.steps / run.steps_per_epoch)
    if o.average_from and not run.average.active:
        run.average.start_step = max(1, math.ceil(o.average_from * t.steps))


def _report_plan_against_budget(t, elapsed_seconds: float) -> None:
    """A plan that did not fit its budget (a plan given on the command line, re-planning off, or a machine whose
    speed changed within the last epoch): say so with the numbers instead of letting it pass."""
    budget = 60 * t.budget_minutes
    if not budget or 0.9 * budget <= elapsed_seconds <= 1.05 * budget:
        return
    log.warning("the %d planned steps took %.1f min of a %g-min budget: the machine ran %s than planned "
                "(--set train.plan=%s replays the run)", t.steps, elapsed_seconds / 60, t.budget_minutes,
                "slower" if elapsed_seconds > budget else "faster", _plan_text(t))


def _plan_text(t) -> str:
    return "[" + ",".join(f"[{step},{total}]" for step, total in (t.plan or [[0, t.steps]])) + "]"


def _setup(cfg: TrainConfig, out: Path, family, rt) -> _Run:
    """Data, model, optimiser and schedule, in the order that fixes every random draw."""
    if cfg.optim.average_decay and not cfg.optim.average_from:  # e.g. averaging turned off on a preset that has it
        log.warning("optim.average_decay=%g is unused: optim.average_from=0 keeps no average (give the share of the "
                    "steps it starts at, e.g. --set optim.average_from=0.3)", cfg.optim.average_decay)
    runtime.seed_everything(cfg.train.seed)
    corpus = load_word_corpus(cfg.data.corpus)
    if rt.is_main:
        corpus.vocab.save(out / rundir.VOCAB)
    streams = {s: lm_pairs(_cap(ids, cfg.data, s), corpus.vocab.eos_id) for s, ids in corpus.splits.items()}
    n_train = streams["train"][0].numel()
    # before the model: a split too small for one batch fails at once, not after a compiled cell's first build
    steps_per_epoch = family.steps_per_epoch(n_train, cfg.data, cfg.model)
    if steps_per_epoch < 1:
        raise LmlabError(family.too_small(n_train, cfg.data))
    net = family.build(to_dict(cfg.model), len(corpus.vocab)).to(rt.device)
    kernels.build_ahead(net)  # a first build of a compiled cell takes about 40 s: not on the budget's clock
    optimizer = make_optimizer(net, cfg.optim)
    train_model = DistributedDataParallel(net) if rt.distributed else net
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    t, spent = cfg.train, 0.0
    if t.plan:
        _check_plan(t)
    elif t.budget_minutes and not t.steps:
        t.steps, spent = budget.plan_steps(t.budget_minutes, family, net, cfg, streams, rt, steps_per_epoch,
                                           lambda model: make_optimizer(model, cfg.optim))
        t.plan = [[0, t.steps]]
    t.replan = bool(t.replan and t.budget_minutes and t.plan)
    if t.steps:  # the run ends after exactly this many steps, mid-epoch if need be, and validates there
        t.epochs = math.ceil(t.steps / steps_per_epoch)
    if rt.is_main:
        rundir.write_json(out / rundir.CONFIG, to_dict(cfg))  # with the plan: --set train.plan=... replays it
    o, total_steps = cfg.optim, t.steps or t.epochs * steps_per_epoch
    sched = schedule.scheduler(optimizer, o.schedule, total_steps, o.warmup_steps, o.min_lr_ratio, o.anneal_factor,
                               t.plan)
    average = WeightAverage(max(1, math.ceil(o.average_from * total_steps)) if o.average_from else math.inf,
                            decay=o.average_decay)
    run = _Run(cfg, out, family, rt, corpus, streams, net, train_model, optimizer, sched, steps_per_epoch,
               MetricsLogger(out, cfg.log.tensorboard, rt.is_main), Best(cfg.train.patience), average)
    run.progress["elapsed"] = spent  # the budget's measurement counts against it
    return run


def _check_plan(t) -> None:
    """A plan given (or recorded) as [[0, N0], [s1, N1], ...]: its steps are the last total."""
    steps = [p[0] for p in t.plan if len(p) == 2]
    if len(steps) != len(t.plan) or steps[0] != 0 or steps != sorted(steps):
        raise LmlabError(f"train.plan={t.plan} is not a plan: give [[0, total steps], [step, new total], ...] "
                         "with the steps in order, as a run's config.json records it")
    if t.steps and t.steps != t.plan[-1][1]:
        raise LmlabError(f"train.steps={t.steps} disagrees with train.plan, which ends after {t.plan[-1][1]} steps: "
                         "give one of the two")
    t.steps = t.plan[-1][1]


def _restore(run: _Run) -> None:
    weights, run.progress = checkpoint.load(run.out / rundir.LAST, run.optimizer, run.sched)
    if run.cfg.train.plan:  # the checkpoint's schedule holds the plan as it was at that epoch
        _set_plan(run, [[step, total] for step, total, _ in run.sched.lr_lambdas[0].segments])
    run.net.load_state_dict(weights)
    run.best.load_state_dict(run.progress.pop("best"))
    run.average.load_state_dict(run.progress.pop("average", None), run.net)
    t = run.cfg.train
    if t.steps:
        lifecycle.refuse_if_done(run.out, run.progress["step"], t.steps, "steps", "train.steps")
    else:
        lifecycle.refuse_if_done(run.out, run.progress["epoch"], t.epochs, "epochs", "train.epochs")
    row = run.progress.pop("row", None)  # the checkpoint's own epoch (absent from checkpoints before it was kept)
    run.metrics.keep(lambda r: r["epoch"] <= run.progress["epoch"])  # an epoch logged after the checkpoint reruns
    if row and not any(r["epoch"] == row["epoch"] for r in run.metrics.rows()):
        run.metrics.log(row, row["epoch"], prefix="epoch/")  # stopped between the checkpoint and its row
    log.info("resuming %s after epoch %d (best validation loss %.4f)", run.out, run.progress["epoch"], run.best.loss)


def _epochs(run: _Run) -> tuple[str, str | None]:
    """Train, validate, checkpoint, anneal or stop, epoch after epoch. Returns (status, why it diverged)."""
    cfg, rt, progress = run.cfg, run.rt, run.progress
    t, epoch = cfg.train, progress["epoch"]
    # A run with a step count ends after exactly those steps, however many windows its epochs turn out to hold
    # (data.variable_bptt draws them anew each epoch); train.epochs then only estimates the epochs.
    while (progress["step"] < t.steps) if t.steps else (epoch < t.epochs):
        epoch += 1
        started, first_step = time.perf_counter(), progress["step"]
        try:
            loss_sum, tokens, train_seconds, lr = _train_epoch(run, epoch)
        except Diverged as e:
            return "diverged", f"epoch {epoch}: {e}"
        valid_nll, valid_count, weights = _validate(run)
        row = {"epoch": epoch, "step": progress["step"], "train_loss": loss_sum / tokens,
               "train_ppl": perplexity(loss_sum, tokens), "valid_loss": valid_nll / valid_count,
               "valid_ppl": perplexity(valid_nll, valid_count), "lr": lr, "tokens_per_s": tokens / train_seconds}
        if run.average.active:
            row |= {"weights": weights.name, "averaged_samples": run.average.count}
            row |= {f"valid_ppl_{kind}": perplexity(nll, valid_count) for kind, nll in weights.nlls.items()}
        row["seconds"] = time.perf_counter() - started
        progress["elapsed"] = progress.get("elapsed", 0.0) + row["seconds"]
        row["elapsed_minutes"] = progress["elapsed"] / 60  # training + validation so far, across resumes
        if not math.isfinite(row["valid_ppl"]):
            return "diverged", f"epoch {epoch}: validation perplexity {row['valid_ppl']}"
        improved = run.best.update(row["valid_loss"], epoch)
        if not improved:
            schedule.on_plateau(run.sched)
        progress["epoch"] = epoch
        if cfg.train.replan:
            if progress["step"] < cfg.train.steps:  # (a run that has done its steps has ended)
                _replan(run, train_seconds / max(1, progress["step"] - first_step), row["seconds"] - train_seconds)
            row["planned_steps"] = cfg.train.steps
        if rt.is_main:  # checkpoints first: a metrics row always has a checkpoint behind it
            if improved:
                rundir.save_checkpoint(run.out / rundir.BEST, {"model": weights.module.state_dict(), "epoch": epoch,
                                                               "valid_loss": row["valid_loss"],
                                                               "weights": weights.name})
            checkpoint.save(run.out / rundir.LAST, run.net.state_dict(), run.optimizer, run.sched,
                            dict(progress, best=run.best.state_dict(), average=run.average.state_dict(), row=row))
            run.metrics.log(row, epoch, prefix="epoch/")
            log.info("epoch %3d | train ppl %8.2f | valid ppl %8.2f%s%s | lr %.3g | %s tok/s | %.0f s", epoch,
                     row["train_ppl"], row["valid_ppl"], " *" if improved else "  ",
                     f" (kept {weights.name}: averaged {row['valid_ppl_averaged']:.2f}, raw {row['valid_ppl_raw']:.2f})"
                     if run.average.active else "", lr,
                     f"{row['tokens_per_s']:,.0f}", row["seconds"])
        if run.best.should_stop:
            log.info("early stopping: no validation improvement for %d epochs", cfg.train.patience)
            return "early_stopped", None
    return "finished", None


def _train_epoch(run: _Run, epoch: int):
    """One pass over the training stream. Returns (summed NLL, tokens, seconds, last lr), summed over processes."""
    cfg, rt, net, optimizer, sched, progress = run.cfg, run.rt, run.net, run.optimizer, run.sched, run.progress
    batches = run.family.train_batches(net, run.streams["train"], cfg.data, epoch, cfg.train.seed, rt)
    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    tokens, lr = 0, optimizer.param_groups[0]["lr"]
    started = time.perf_counter()
    bar = tqdm(batches, total=run.steps_per_epoch, desc=f"epoch {epoch}", unit="step",
               disable=not rt.is_main or None, leave=False, mininterval=2)
    # bf16 autocast on CUDA when asked (train.amp): matmuls in bf16, the loss in fp32. Never on CPU, where
    # bf16 is far slower than fp32.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.train.amp and rt.device.type == "cuda")
    for step, (x, y) in enumerate(bar):
        if cfg.train.steps and progress["step"] >= cfg.train.steps:
            break  # the planned steps are spent: this epoch is the last, and shorter
        lr = optimizer.param_groups[0]["lr"]
        loss = optimizer_step(batches, run.train_model, net, x, y, optimizer, cfg.optim.clip, autocast)
        sched.step()
        progress["step"] += 1
        run.average.update(net, progress["step"])
        loss_sum += loss.double() * y.numel()
        tokens += y.numel()
        if step % 20 == 0:  # reading the loss synchronises a GPU: do it now and then, not every step
            current = loss.item()
            if progress["first_loss"] is None:
                progress["first_loss"] = current
            if diverged(current, progress["first_loss"]):
                raise Diverged(f"loss {current:.4g} at step {progress['step']} (it started at "
                               f"{progress['first_loss']:.4g})")
            bar.set_postfix(loss=f"{current:.3f}", tok_s=f"{tokens * rt.world_size / (time.perf_counter() - started):.0f}")
            run.metrics.scalar("train/step_loss", current, progress["step"])
    seconds = time.perf_counter() - started
    total_loss, total_tokens = runtime.all_reduce_sum(rt, [loss_sum.item(), float(tokens)])
    if diverged(total_loss / max(total_tokens, 1), progress["first_loss"]):
        raise Diverged(f"epoch loss {total_loss / max(total_tokens, 1):.4g}")
    return total_loss, int(total_tokens), seconds, lr


@dataclass
class _Validated:
    """Which weights a validation chose (raw, or averaged when that scored lower) and each one's summed NLL."""

    name: str
    module: torch.nn.Module
    nlls: dict[str, float]


def _validate(run: _Run) -> tuple[float, int, _Validated]:
    """Validation NLL of the raw weights, and of their running mean once averaging has started: the lower one
    is the epoch's validation loss, the one a best checkpoint keeps."""
    raw_nll, count = run.nll("valid")
    if not run.average.active:
        return raw_nll, count, _Validated("raw", run.net, {"raw": raw_nll})
    averaged_nll, _ = run.nll("valid", run.average.module)
    nlls = {"raw": raw_nll, "averaged": averaged_nll}
    name = "averaged" if averaged_nll < raw_nll else "raw"
    return nlls[name], count, _Validated(name, run.average.module if name == "averaged" else run.net, nlls)


def _cap(ids: torch.Tensor, data, split: str) -> torch.Tensor:
    """The smoke preset trains and validates on a prefix of each split; 0 means the whole split."""
    cap = data.max_train_tokens if split == "train" else data.max_eval_tokens
    return ids[:cap] if cap else ids


def make_optimizer(net, o):
    """The optimiser a run trains with (also what benchmarks/train_throughput.py times)."""
    if o.name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    # No weight decay on biases, norms and position tables (as in GPT-2/nanoGPT): it only hurts them.
    decay = [p for p in net.parameters() if p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.dim() < 2]
    # fused: one kernel per parameter for the whole update. On CPU, torch's default is a loop of separate ops per
    # parameter (its multi-tensor path is CUDA's), which took 6% of the Elman RNN's step.
    return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=tuple(o.betas), fused=True)


def _finish(run: _Run, counts: dict, status: str) -> results.TrainFinal:
    cfg, out, corpus, streams = run.cfg, run.out, run.corpus, run.streams
    rows = rundir.read_jsonl(out / rundir.METRICS)
    best = rundir.load_checkpoint(out / rundir.BEST)
    run.net.load_state_dict(best["model"])
    valid_nll, valid_count = run.nll("valid")
    test_nll, test_count = run.nll("test")
    final = results.TrainFinal(
        model=cfg.model.arch, status=status, epochs=len(rows), best_epoch=best["epoch"],
        valid_loss=valid_nll / valid_count, valid_ppl=perplexity(valid_nll, valid_count),
        test_loss=test_nll / test_count, test_ppl=perplexity(test_nll, test_count),
        tokens={"valid": valid_count, "test": test_count, "train": int(streams["train"][1].numel())},
        oov_words=corpus.oov_counts, vocab_size=len(corpus.vocab), parameters=counts,
        train_valid_seconds=sum(r["seconds"] for r in rows),
        evaluation=run.family.evaluation_note(cfg.data, cfg.model),
        best_weights=best.get("weights", "raw") if cfg.optim.average_from else None,
        unit="word (whitespace token; one <eos> per line; out-of-vocabulary words scored as <unk>)",
        config=to_dict(cfg))
    results.write(out / rundir.FINAL, final)
    plot_curves(rows, out / rundir.CURVES, f"{cfg.model.arch} on {cfg.data.corpus}")
    log.info("best epoch %d: valid ppl %.2f, test ppl %.2f -> %s", final.best_epoch, final.valid_ppl,
             final.test_ppl, out / rundir.FINAL)
    return final

"""lmlab finetune: continue training a pretrained causal LM on a domain corpus, with our own loop.

The steps, top to bottom: config -> accelerator (CPU, one GPU, or many under ``accelerate launch``/torchrun)
-> model and tokenizer (lmlab.pretrained.registry) -> optional LoRA (peft) -> examples (lmlab.pretrained.examples):
document-level splits packed into chunks (language modelling), or PubMedQA verdict examples of the training ids
(``--task pubmedqa``) -> AdamW with warm-up and cosine decay (lmlab.training.schedule) -> steps (gradient
accumulation, clipping), evaluation every N steps on the validation split and on a general text (to watch
forgetting; for the task also validation accuracy, which then chooses the checkpoint), best checkpoint, resume
state, early stopping -> the best weights saved with ``save_pretrained`` -> final.json
(lmlab.results.FinetuneFinal) and curves.png.

Run directory: config.json, metrics.jsonl (a row per step and per evaluation), model/ (the best weights and the
tokenizer, a plain ``from_pretrained`` directory; LoRA adapters merged into it), adapter/ (LoRA only: the
peft adapter), last.pt (resume; removed when the run finishes), final.json, curves.png.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lmlab import results
from lmlab.config import FinetuneConfig, load_recipe, to_dict
from lmlab.data.eval_texts import head, load_eval_text
from lmlab.errors import LmlabError
from lmlab.pretrained import pubmedqa, registry
from lmlab.pretrained.domain_data import Document, limit, load_domain, pack, pubmedqa_records
from lmlab.pretrained.examples import Examples, packed, verdict_examples
from lmlab.pretrained.lora import with_lora
from lmlab.report.plots import plot_finetune_curves
from lmlab.training import checkpoint, lifecycle, rundir, runtime, schedule
from lmlab.training.logger import MetricsLogger
from lmlab.training.progress import Best, diverged

log = logging.getLogger("lmlab")


def configure(model: str | None, dataset: str | None, preset: str, overrides: list[str] = (),
              lora: bool = False, task: str | None = None) -> FinetuneConfig:
    return load_recipe("finetune", preset, {"model.name": model, "data.dataset": dataset, "data.task": task,
                                            "lora.enabled": True if lora else None}, overrides)


def run(cfg: FinetuneConfig, out: Path, resume: bool = False) -> results.FinetuneFinal:
    from accelerate import Accelerator

    out = Path(out)
    t = cfg.train
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    accelerator = Accelerator(cpu=runtime.resolve_device(t.device) == "cpu", mixed_precision=t.mixed_precision)
    resume = lifecycle.prepare(out, cfg, resume, accelerator.is_main_process)
    try:
        return _finetune(cfg, out, resume, accelerator)
    except BaseException:
        lifecycle.abandon(out, accelerator.is_main_process)
        raise


def _finetune(cfg: FinetuneConfig, out: Path, resume: bool, accelerator) -> results.FinetuneFinal:
    t, main, world = cfg.train, accelerator.is_main_process, accelerator.num_processes
    runtime.seed_everything(t.seed)
    splits = load_domain(cfg.data.dataset) if cfg.data.task == "lm" else None  # a bad corpus fails first
    model, tokenizer = registry.load(cfg.model.name)
    total_params = sum(p.numel() for p in model.parameters())
    if cfg.lora.enabled:
        model = with_lora(model, cfg.lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    data = _data(cfg, splits, tokenizer, world)

    lr = cfg.lora.lr if cfg.lora.enabled else cfg.optim.lr
    # fused: one kernel for all tensors (CPU and CUDA), as transformers.Trainer uses by default
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=cfg.optim.weight_decay, betas=(0.9, 0.95), fused=True)
    sched = schedule.scheduler(optimizer, "cosine", t.steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    metrics = MetricsLogger(out, cfg.log.tensorboard, enabled=main)
    progress = {"step": 0, "train_seconds": 0.0, "tokens": 0, "initial": None}
    best = Best(t.patience)
    if resume:
        weights, progress = checkpoint.load(out / rundir.LAST, optimizer, sched)
        _load_trainable(accelerator.unwrap_model(model), weights, out / rundir.LAST)
        best.load_state_dict(progress.pop("best"))
        lifecycle.refuse_if_done(out, progress["step"], t.steps, "steps", "train.steps")
        metrics.keep(lambda r: r["step"] <= progress["step"])  # rows logged after the checkpoint rerun
        log.info("resuming at step %d", progress["step"])

    def evaluate(step: int) -> dict[str, float]:
        plain = accelerator.unwrap_model(model)  # not through DDP: no collective calls while only some ranks score
        row = {"kind": "eval", "step": step, "valid_loss": _mean_loss(plain, data["valid"], accelerator)}
        if data["valid_records"] is not None:  # task fine-tuning: the checkpoint is chosen on this accuracy
            row["valid_acc"] = pubmedqa.evaluate(plain, tokenizer, data["valid_records"], "lm-eval",
                                                 max_tokens=cfg.data.seq_len, resamples=100)["accuracy"]
        if data["general"] is not None:
            row["general_loss"] = _mean_loss(plain, data["general"], accelerator)
        for key in ("valid", "general"):
            if f"{key}_loss" in row:
                row[f"{key}_ppl"] = math.exp(row[f"{key}_loss"])
        return row

    if progress["step"] == 0 and main:
        progress["initial"] = evaluate(0)
        metrics.log(progress["initial"], 0)
        log.info("step 0: %s%s", _valid(progress["initial"]), _general(progress["initial"]))
    stopped_early = _steps(cfg, model, optimizer, sched, trainable, data["train"], accelerator, progress, best,
                           metrics, evaluate, tokenizer, out)
    accelerator.wait_for_everyone()
    metrics.close()
    return _finish(cfg, out, accelerator, progress, best, stopped_early, total_params,
                   sum(p.numel() for p in trainable), data)


def _data(cfg: FinetuneConfig, splits, tokenizer, world: int) -> dict:
    """Training and validation examples with the model's own tokenizer, and the general text for forgetting.
    ``lm``: document-level splits packed into chunks. ``pubmedqa``: verdict examples of the PQA-L training and
    validation questions (never a test id), with the validation questions kept for accuracy."""
    d, t = cfg.data, cfg.train
    if d.task == "pubmedqa":
        records = pubmedqa_records()
        train_docs, valid_records = records["train"], records["valid"]
        train = verdict_examples(train_docs, tokenizer, d.seq_len, d.long_answer)
        valid = verdict_examples(valid_records, tokenizer, d.seq_len, d.long_answer)
    else:
        train_docs, valid_records = limit(splits.train, d.train_docs, d.seed), None
        chunks = pack(train_docs, tokenizer, d.seq_len)
        if d.train_tokens:
            chunks = chunks[: max(1, d.train_tokens // d.seq_len)]
        train, valid = packed(chunks), packed(pack(splits.valid, tokenizer, d.seq_len)[: d.valid_chunks])
    general = None
    if t.general_corpus:
        # enough characters for the chunks asked for (about 4 characters a token), cut at a line boundary
        text = head(load_eval_text(t.general_corpus).text, 6 * d.seq_len * t.general_chunks)
        general = packed(pack([Document("general", text)], tokenizer, d.seq_len)[: t.general_chunks])
    if t.batch_size % t.grad_accum:
        raise LmlabError("train.batch_size must be a multiple of train.grad_accum")
    if len(train) < t.batch_size * world:
        raise LmlabError(f"the training set has {len(train)} examples of up to {d.seq_len} tokens, fewer than one "
                         f"batch ({t.batch_size} x {world} processes): use more data or a smaller train.batch_size")
    return {"train": train, "valid": valid, "valid_records": valid_records, "general": general,
            "train_docs": len(train_docs)}


def _steps(cfg, model, optimizer, sched, trainable, examples, accelerator, progress, best, metrics, evaluate,
           tokenizer, out) -> bool:
    """Optimizer steps until the budget is spent or early stopping; True when it stopped early."""
    t, world, main = cfg.train, accelerator.num_processes, accelerator.is_main_process
    micro = t.batch_size // t.grad_accum
    bar = tqdm(total=t.steps, initial=progress["step"], desc="finetune", disable=not main, dynamic_ncols=True)
    model.train()
    while progress["step"] < t.steps:
        step = progress["step"] + 1
        started = time.perf_counter()
        rows = _batch_rows(step, t.batch_size * world, len(examples), cfg.data.seed)
        rows = rows[accelerator.process_index::world]  # each process takes its share of the global batch
        loss_sum = torch.zeros((), device=accelerator.device)
        for k in range(t.grad_accum):
            batch = examples.batch(rows[k * micro:(k + 1) * micro], accelerator.device)
            with accelerator.autocast():
                loss = model(**batch).loss / t.grad_accum
            accelerator.backward(loss)
            loss_sum += loss.detach()
        if world > 1:  # log the loss of the global batch, not of process 0's share
            loss_sum = accelerator.reduce(loss_sum, "mean")
        loss_value = loss_sum.item()  # one device sync per step, not per micro-batch
        grad_norm = accelerator.clip_grad_norm_(trainable, cfg.optim.grad_clip)
        lr = sched.get_last_lr()[0]
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        tokens = int(examples.attention_mask[rows].sum()) * world  # this process's share, times processes
        progress.update(step=step, train_seconds=progress["train_seconds"] + seconds,
                        tokens=progress["tokens"] + tokens)
        start_loss = progress["initial"]["valid_loss"] if progress["initial"] else None
        if diverged(loss_value, start_loss):
            start = f" (validation started at {start_loss:.4g})" if start_loss is not None else ""
            raise LmlabError(f"the training loss became {loss_value:.4g} at step {step}{start}: the run diverged; "
                             "lower optim.lr")
        metrics.log({"kind": "train", "step": step, "train_loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                     "tokens": progress["tokens"], "tokens_per_s": tokens / seconds}, step, prefix="train/")
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens / seconds:.0f}")
        if step % t.eval_every == 0 or step == t.steps:
            model.eval()
            row = evaluate(step)
            model.train()
            improved = best.update(_selection_score(row), step)
            if improved and main:
                # for a peft model, save_pretrained writes the adapter only
                registry.save(accelerator.unwrap_model(model), tokenizer,
                              out / (results.ADAPTER_DIR if cfg.lora.enabled else results.MODEL_DIR))
            if main:  # the checkpoint first: a metrics row always has a checkpoint behind it
                _checkpoint(out / rundir.LAST, accelerator.unwrap_model(model), optimizer, sched,
                            dict(progress, best=best.state_dict()))
                metrics.log(row, step, prefix="eval/")
            log.info("step %d: %s%s%s", step, _valid(row), _general(row), " (best)" if improved else "")
            if best.should_stop:
                bar.close()
                return True
    bar.close()
    return False


def _finish(cfg, out, accelerator, progress, best, stopped_early, total_params, trainable_params, data):
    if accelerator.is_main_process and cfg.lora.enabled:
        _merge_adapter(cfg.model.name, out)
    initial = progress["initial"] or rundir.read_jsonl(out / rundir.METRICS)[0]
    rows = rundir.read_jsonl(out / rundir.METRICS) if accelerator.is_main_process else [initial]
    best_eval = next((r for r in rows if r["kind"] == "eval" and r["step"] == best.at), initial)
    final = results.FinetuneFinal(
        config=to_dict(cfg), model=cfg.model.name, mode="lora" if cfg.lora.enabled else "full",
        params_total=total_params, params_trainable=trainable_params, train_docs=data["train_docs"],
        train_chunks=len(data["train"]), train_tokens_available=data["train"].tokens,
        tokens_trained=progress["tokens"], epochs=progress["tokens"] / max(1, data["train"].tokens),
        steps=progress["step"], stopped_early=stopped_early, train_seconds=progress["train_seconds"],
        train_tokens_per_s=progress["tokens"] / max(progress["train_seconds"], 1e-9), best_step=best.at,
        best_valid_loss=best_eval["valid_loss"], best_valid_ppl=best_eval["valid_ppl"],
        initial_valid_ppl=initial["valid_ppl"],
        initial_general_ppl=initial.get("general_ppl"), model_dir=str(out / results.MODEL_DIR),
        device=str(accelerator.device), processes=accelerator.num_processes, threads=torch.get_num_threads(),
        best_general_ppl=best_eval.get("general_ppl"), task=cfg.data.task,
        initial_valid_acc=initial.get("valid_acc"), best_valid_acc=best_eval.get("valid_acc"))
    if accelerator.is_main_process:
        results.write(out / rundir.FINAL, final)
        plot_finetune_curves(rows, out / rundir.CURVES, f"{final.model} {final.mode} fine-tune on {cfg.data.dataset}")
        rundir.remove(out / rundir.LAST)  # the run is finished; the resume state is 1-2 GB
        log.info("best valid ppl %.3f at step %d (from %.3f); %.0f tokens/s; model in %s", final.best_valid_ppl,
                 best.at, final.initial_valid_ppl, final.train_tokens_per_s, out / results.MODEL_DIR)
    return final


def _selection_score(row: dict) -> float:
    """Lower is better: the validation loss, or for task fine-tuning the validation error rate."""
    return 1 - row["valid_acc"] if "valid_acc" in row else row["valid_loss"]


def _valid(row: dict) -> str:
    acc = f", valid accuracy {row['valid_acc']:.3f}" if "valid_acc" in row else ""
    return f"valid ppl {row['valid_ppl']:.3f}{acc}"


def _general(row: dict) -> str:
    return f", general ppl {row['general_ppl']:.3f}" if "general_ppl" in row else ""


def _batch_rows(step: int, batch: int, n: int, seed: int) -> torch.Tensor:
    """Chunk indices of a global step: epochs of seeded permutations laid end to end, so the batch of any step
    is known without replaying earlier ones (exact resume) and every chunk is seen once per epoch."""
    start = (step - 1) * batch
    rows = []
    while len(rows) < batch:
        epoch, offset = divmod(start + len(rows), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        rows += perm[offset: offset + batch - len(rows)].tolist()
    return torch.tensor(rows)


@torch.no_grad()
def _mean_loss(model, examples: Examples, accelerator, micro: int = 4) -> float:
    """Mean next-token loss over the examples' targets (rows weighted by their number of targets; packed chunks
    all have seq_len - 1, so their means simply average)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(examples), micro):
        rows = torch.arange(i, min(i + micro, len(examples)))
        with accelerator.autocast():
            total += model(**examples.batch(rows, accelerator.device)).loss.item() * int(examples.weights[rows].sum())
    model.train(was_training)
    return total / int(examples.weights.sum())


def _merge_adapter(base_name: str, out: Path) -> None:
    """Base model + best adapter, merged: a plain directory that ``from_pretrained`` loads without peft."""
    from peft import PeftModel

    base, tokenizer = registry.load(base_name)
    merged = PeftModel.from_pretrained(base, out / results.ADAPTER_DIR).merge_and_unload()
    registry.save(merged, tokenizer, out / results.MODEL_DIR)


def _checkpoint(path: Path, model, optimizer, sched, progress: dict) -> None:
    """Only the weights training changes (all of them, or a LoRA model's adapters) go into the resume state."""
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    checkpoint.save(path, trainable, optimizer, sched, progress)


def _load_trainable(model, weights: dict, path: Path) -> None:
    missing = set(weights) - {n for n, _ in model.named_parameters()}
    if missing:
        raise LmlabError(f"{path} does not match this model ({len(missing)} unknown weights): remove it to start over")
    model.load_state_dict(weights, strict=False)

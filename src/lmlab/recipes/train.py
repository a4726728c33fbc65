"""lmlab train: a word-level language model on a corpus, with per-epoch perplexity, checkpoints and resume.

The steps, top to bottom: config -> runtime -> data -> model -> optimiser -> epochs (train, validate,
checkpoint, anneal/stop) -> test with the best weights -> final.json and curves.png.

Run directory (see lmlab.rundir): config.json, vocab.txt, metrics.jsonl (one line per epoch), last.pt
(resume), best.pt (lowest validation loss), final.json, curves.png.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lmlab import rundir, runtime
from lmlab.config import RUNTIME_KEYS, apply_overrides, config_differences, load_preset
from lmlab.data.batching import batchify, bptt_windows, context_windows, lm_pairs
from lmlab.data.word_corpus import load_word_corpus
from lmlab.errors import LmlabError
from lmlab.metrics.perplexity import perplexity
from lmlab.models import FAMILIES, build_model, parameter_counts
from lmlab.report.plots import plot_curves
from lmlab.scoring import score_settings, token_nlls


class Diverged(Exception):
    pass


def run(model: str, preset: str, out: Path, overrides: list[str] = (), resume: bool = False) -> dict[str, Any]:
    cfg = apply_overrides(load_preset(model, preset), list(overrides))
    cfg["preset"] = preset
    out = Path(out)
    data_cfg, model_cfg, optim_cfg, train_cfg = cfg["data"], cfg["model"], cfg["optim"], cfg["train"]
    family = FAMILIES[model_cfg["arch"]]
    rt = runtime.setup(train_cfg["device"], train_cfg["threads"])
    _prepare_run_dir(out, cfg, resume, rt)
    runtime.seed_everything(train_cfg["seed"])

    # --- data -------------------------------------------------------------------------------------------
    corpus = load_word_corpus(data_cfg["corpus"])
    if rt.is_main:
        corpus.vocab.save(out / rundir.VOCAB)
    streams = {s: lm_pairs(_cap(ids, data_cfg, s), corpus.vocab.eos_id) for s, ids in corpus.splits.items()}

    # --- model and optimiser ----------------------------------------------------------------------------
    net = build_model(model_cfg, len(corpus.vocab)).to(rt.device)
    counts = parameter_counts(net)
    optimizer = _optimizer(net, optim_cfg)
    train_model = DistributedDataParallel(net) if rt.distributed else net
    if train_cfg["compile"]:
        train_model = torch.compile(train_model)
    steps_per_epoch = _steps_per_epoch(family, streams["train"][0].numel(), data_cfg, model_cfg)
    if steps_per_epoch < 1:
        unit = "window" if family == "transformer" else "column"
        raise LmlabError(
            f"the training split ({streams['train'][0].numel():,} tokens) is too small for one batch of "
            f"{data_cfg['batch_size']} {unit}s: lower data.batch_size"
            + (" or model.context_length" if family == "transformer" else "") + ", or use more data")
    schedule = LRSchedule(optim_cfg, total_steps=train_cfg["epochs"] * steps_per_epoch)

    state = {"epoch": 0, "step": 0, "best_valid_loss": math.inf, "bad_epochs": 0}
    if resume:
        state = _restore(out, net, optimizer, schedule)
    writer = _tensorboard(cfg, out, rt)
    if rt.is_main:
        print(
            f"{model} ({model_cfg['impl']}) on {data_cfg['corpus']}: {counts['total']:,} parameters "
            f"({counts['non_embedding']:,} without embeddings), vocabulary {len(corpus.vocab):,}, "
            f"{streams['train'][1].numel():,} training tokens, {steps_per_epoch} steps/epoch, device {rt.device}"
            + (f", {rt.world_size} processes" if rt.distributed else "")
        )

    def validation_nll(split: str) -> tuple[float, int]:
        nll = token_nlls(net, family, *streams[split], **score_settings(data_cfg))
        return float(nll.sum()), nll.numel()

    status = "finished"
    for epoch in range(state["epoch"] + 1, train_cfg["epochs"] + 1):
        started = time.perf_counter()
        try:
            loss_sum, tokens, train_seconds = _train_epoch(
                family, train_model, net, optimizer, schedule, streams["train"], data_cfg, optim_cfg,
                epoch, state, rt, train_cfg["seed"], writer, steps_per_epoch, train_cfg["amp"],
            )
        except Diverged as e:
            status, divergence = "diverged", f"epoch {epoch}: {e}"
            break
        valid_nll, valid_count = validation_nll("valid")
        valid_loss = valid_nll / valid_count
        row = {
            "epoch": epoch,
            "step": state["step"],
            "train_loss": loss_sum / tokens,
            "train_ppl": perplexity(loss_sum, tokens),
            "valid_loss": valid_loss,
            "valid_ppl": perplexity(valid_nll, valid_count),
            "lr": schedule.current,
            "tokens_per_s": tokens / train_seconds,
            "seconds": time.perf_counter() - started,
        }
        improved = valid_loss < state["best_valid_loss"]
        if improved:
            state["best_valid_loss"], state["bad_epochs"] = valid_loss, 0
        else:
            state["bad_epochs"] += 1
            schedule.on_plateau()
        state["epoch"] = epoch
        if rt.is_main:
            _log_epoch(out, row, improved, writer)
            if improved:
                rundir.save_checkpoint(out / rundir.BEST, {"model": net.state_dict(), "epoch": epoch,
                                                           "valid_loss": valid_loss})
            rundir.save_checkpoint(out / rundir.LAST, {
                "model": net.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "state": dict(state), "rng": _rng_state(),
            })
        patience = train_cfg["patience"]
        if patience and state["bad_epochs"] >= patience:
            if rt.is_main:
                print(f"early stopping: no validation improvement for {patience} epochs")
            status = "early_stopped"
            break

    final = None
    if rt.is_main and (out / rundir.BEST).is_file():
        final = _finish(out, cfg, net, counts, corpus, streams, validation_nll, status, model)
    if writer:
        writer.close()
    runtime.teardown(rt)
    if status == "diverged":
        kept = f"; the best epoch's checkpoint and final.json are kept in {out}" if final else ""
        raise LmlabError(f"training diverged ({divergence}): lower optim.lr or optim.clip and retrain{kept}")
    return final


# --- epochs ---------------------------------------------------------------------------------------------


def _train_epoch(family, train_model, net, optimizer, schedule, stream, data_cfg, optim_cfg, epoch, state, rt,
                 seed, writer, steps_per_epoch, amp):
    """One pass over the training stream. Returns (summed NLL, tokens, seconds), summed over processes."""
    net.train()
    if family == "recurrent":
        batches = RecurrentBatches(net, stream, data_cfg, rt)
    else:
        batches = TransformerBatches(stream, data_cfg, net.context_length, epoch, seed, rt)
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    tokens = 0
    started = time.perf_counter()
    bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}", unit="step",
               disable=not rt.is_main or None, leave=False, mininterval=2)
    # bf16 autocast on CUDA when asked (train.amp): matmuls in bf16, the loss in fp32. Never on CPU, where
    # bf16 is far slower than fp32.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and rt.device.type == "cuda")
    for step, (x, y, state_in) in enumerate(bar):
        schedule.apply(optimizer, state["step"])
        with autocast:
            if family == "recurrent":
                logits, state_out = train_model(x, state_in)
                batches.send_state(state_out)
            else:
                logits = train_model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim_cfg["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), optim_cfg["clip"])
        optimizer.step()
        state["step"] += 1
        loss_sum += loss.detach().double() * y.numel()
        tokens += y.numel()
        if step % 20 == 0:  # reading the loss synchronises a GPU: do it now and then, not every step
            current = loss.item()
            if not math.isfinite(current):
                raise Diverged(f"loss {current} at step {state['step']}")
            tok_s = tokens * rt.world_size / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{current:.3f}", tok_s=f"{tok_s:.0f}")
            if writer:
                writer.add_scalar("train/step_loss", current, state["step"])
    seconds = time.perf_counter() - started
    total_loss, total_tokens = runtime.all_reduce_sum(rt, [loss_sum.item(), float(tokens)])
    if not math.isfinite(total_loss):
        raise Diverged(f"epoch loss {total_loss}")
    return total_loss, int(total_tokens), seconds


class RecurrentBatches:
    """BPTT windows over this process's columns; the caller sends back the state to carry (detached)."""

    def __init__(self, net, stream, data_cfg, rt):
        xs, ys = batchify(*stream, data_cfg["batch_size"])
        cols = _shard(data_cfg["batch_size"], rt)
        self.xs, self.ys = xs[:, cols].to(rt.device), ys[:, cols].to(rt.device)
        self.bptt = data_cfg["bptt"]
        self.state = net.initial_state(self.xs.size(1), net.encoder.weight)

    def send_state(self, state):
        self.state = _detach(state)

    def __iter__(self):
        for start, length in bptt_windows(self.xs.size(0), self.bptt):
            yield self.xs[start : start + length], self.ys[start : start + length], self.state


class TransformerBatches:
    """Shuffled non-overlapping context windows; the window grid shifts each epoch (same on every process)."""

    def __init__(self, stream, data_cfg, context, epoch, seed, rt):
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        offset = int(torch.randint(0, context, (1,), generator=g))
        self.xs, self.ys = context_windows(*stream, context, offset)
        self.order = torch.randperm(self.xs.size(0), generator=g)
        self.batch_size, self.rt = data_cfg["batch_size"], rt
        self.cols = _shard(self.batch_size, rt)

    def __iter__(self):
        for b in range(self.order.numel() // self.batch_size):  # the last partial batch is dropped
            idx = self.order[b * self.batch_size : (b + 1) * self.batch_size][self.cols]
            yield self.xs[idx].to(self.rt.device), self.ys[idx].to(self.rt.device), None


def _shard(batch_size: int, rt) -> slice:
    """This process's share of a global batch: equal contiguous slices, so DDP's mean equals the global mean."""
    if batch_size % rt.world_size:
        raise LmlabError(f"data.batch_size={batch_size} is not divisible by {rt.world_size} processes")
    per = batch_size // rt.world_size
    return slice(rt.rank * per, (rt.rank + 1) * per)


def _steps_per_epoch(family, n_tokens, data_cfg, model_cfg) -> int:
    if family == "recurrent":
        column = n_tokens // data_cfg["batch_size"]
        return math.ceil(column / data_cfg["bptt"]) if column >= 2 else 0
    return (n_tokens // model_cfg["context_length"] - 1) // data_cfg["batch_size"]


def _detach(state):
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(_detach(s) for s in state)


def _cap(ids: torch.Tensor, data_cfg, split: str) -> torch.Tensor:
    """The smoke preset trains and validates on a prefix of each split; 0 means the whole split."""
    cap = data_cfg["max_train_tokens"] if split == "train" else data_cfg["max_eval_tokens"]
    return ids[:cap] if cap else ids


# --- optimisation ---------------------------------------------------------------------------------------


def _optimizer(net, optim_cfg):
    if optim_cfg["name"] == "sgd":
        return torch.optim.SGD(net.parameters(), lr=optim_cfg["lr"], momentum=optim_cfg.get("momentum", 0.0),
                               weight_decay=optim_cfg.get("weight_decay", 0.0))
    if optim_cfg["name"] == "adamw":
        # No weight decay on biases, norms and position tables (as in GPT-2/nanoGPT): it only hurts them.
        decay = [p for p in net.parameters() if p.dim() >= 2]
        no_decay = [p for p in net.parameters() if p.dim() < 2]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim_cfg.get("weight_decay", 0.0)},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=optim_cfg["lr"], betas=tuple(optim_cfg.get("betas", (0.9, 0.999))),
        )
    raise LmlabError(f"unknown optim.name '{optim_cfg['name']}': choose sgd or adamw")


class LRSchedule:
    """Learning rate per step: linear warm-up, then constant, cosine decay, or plateau annealing.

    - ``cosine``: decays to ``lr * min_lr_ratio`` over the planned steps (the right choice for a fixed budget);
    - ``plateau``: divides the rate by ``anneal_factor`` after every epoch whose validation loss did not
      improve (Zaremba et al. 2014; pytorch/examples word_language_model);
    - ``constant``.
    """

    def __init__(self, optim_cfg, total_steps: int):
        self.kind = optim_cfg.get("schedule", "constant")
        if self.kind not in ("constant", "cosine", "plateau"):
            raise LmlabError(f"unknown optim.schedule '{self.kind}': choose constant, cosine or plateau")
        self.base_lr = optim_cfg["lr"]
        self.warmup = optim_cfg.get("warmup_steps", 0)
        self.min_ratio = optim_cfg.get("min_lr_ratio", 0.0)
        self.anneal = optim_cfg.get("anneal_factor", 4.0)
        self.total = max(total_steps, 1)
        self.current = self.base_lr

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        if self.kind == "cosine":
            progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            return self.base_lr * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
        return self.base_lr

    def apply(self, optimizer, step: int) -> None:
        self.current = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = self.current

    def on_plateau(self) -> None:
        if self.kind == "plateau":
            self.base_lr /= self.anneal

    def state_dict(self):
        return {"base_lr": self.base_lr, "current": self.current}

    def load_state_dict(self, state):
        self.base_lr, self.current = state["base_lr"], state["current"]


# --- run directory --------------------------------------------------------------------------------------


def _prepare_run_dir(out: Path, cfg, resume: bool, rt) -> None:
    config_path = out / rundir.CONFIG
    if resume:
        if not (out / rundir.LAST).is_file():
            raise LmlabError(f"nothing to resume in {out}: it has no {rundir.LAST}; start without --resume")
        old = rundir.read_json(config_path)
        changed = config_differences(old, cfg) - RUNTIME_KEYS
        if changed:
            keys = ", ".join(".".join(k) for k in sorted(changed))
            raise LmlabError(f"cannot resume {out}: its config differs in {keys}; use the same --set values")
    elif (out / rundir.METRICS).exists() or (out / rundir.LAST).exists():
        raise LmlabError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        rundir.write_json(config_path, cfg)


def _restore(out: Path, net, optimizer, schedule) -> dict:
    ckpt = rundir.load_checkpoint(out / rundir.LAST)
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["schedule"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    random.setstate(ckpt["rng"]["python"])
    np.random.set_state(ckpt["rng"]["numpy"])
    state = ckpt["state"]
    # Epochs logged after the checkpoint (an interrupted epoch never logs) would be duplicated: drop them.
    rows = [r for r in rundir.read_jsonl(out / rundir.METRICS) if r["epoch"] <= state["epoch"]]
    (out / rundir.METRICS).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    print(f"resuming {out} after epoch {state['epoch']} (best validation loss {state['best_valid_loss']:.4f})")
    return state


def _rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _tensorboard(cfg, out: Path, rt):
    if not (cfg.get("log", {}).get("tensorboard") and rt.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("log.tensorboard=true but tensorboard is not installed (pip install tensorboard): logging to files only")
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def _log_epoch(out: Path, row: dict, improved: bool, writer) -> None:
    rundir.append_jsonl(out / rundir.METRICS, row)
    print(
        f"epoch {row['epoch']:3d} | train ppl {row['train_ppl']:8.2f} | valid ppl {row['valid_ppl']:8.2f}"
        f"{' *' if improved else '  '} | lr {row['lr']:.3g} | {row['tokens_per_s']:,.0f} tok/s | {row['seconds']:.0f} s",
        flush=True,
    )
    if writer:
        for key in ("train_loss", "train_ppl", "valid_loss", "valid_ppl", "lr", "tokens_per_s"):
            writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
        writer.flush()


def _finish(out, cfg, net, counts, corpus, streams, validation_nll, status, model_name) -> dict:
    rows = rundir.read_jsonl(out / rundir.METRICS)
    best = rundir.load_checkpoint(out / rundir.BEST)
    net.load_state_dict(best["model"])
    valid_nll, valid_count = validation_nll("valid")
    test_nll, test_count = validation_nll("test")
    family = FAMILIES[cfg["model"]["arch"]]
    final = {
        "model": model_name,
        "status": status,
        "epochs": len(rows),
        "best_epoch": best["epoch"],
        "valid_loss": valid_nll / valid_count,
        "valid_ppl": perplexity(valid_nll, valid_count),
        "test_loss": test_nll / test_count,
        "test_ppl": perplexity(test_nll, test_count),
        "tokens": {"valid": valid_count, "test": test_count, "train": int(streams["train"][1].numel())},
        "oov_words": corpus.oov_counts,
        "vocab_size": len(corpus.vocab),
        "parameters": counts,
        "train_valid_seconds": sum(r["seconds"] for r in rows),
        "evaluation": _evaluation_note(family, cfg),
        "unit": "word (whitespace token; one <eos> per line; out-of-vocabulary words scored as <unk>)",
        "config": cfg,
    }
    rundir.write_json(out / rundir.FINAL, final)
    plot_curves(rows, out / rundir.CURVES, f"{model_name} on {cfg['data']['corpus']}")
    print(f"best epoch {final['best_epoch']}: valid ppl {final['valid_ppl']:.2f}, test ppl {final['test_ppl']:.2f} "
          f"-> {out / rundir.FINAL}")
    return final


def _evaluation_note(family, cfg) -> str:
    data = cfg["data"]
    if family == "recurrent":
        return (f"every token scored once; {data['eval_batch_size']} contiguous columns, each from a zero state, "
                f"state carried across BPTT windows of {data['bptt']}")
    context = cfg["model"]["context_length"]
    stride = data.get("eval_stride") or context // 2
    return (f"every token scored once; sliding windows of {context} tokens with stride {stride}: each token after "
            f"the first window sees at least {context - stride} tokens of left context")

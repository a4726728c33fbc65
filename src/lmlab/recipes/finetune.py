"""lmlab finetune: continue training a pretrained causal LM on a domain corpus, with our own loop.

The steps, top to bottom: config -> accelerator (CPU, one GPU, or many under ``accelerate launch``/torchrun)
-> model and tokenizer (lmlab.hf.registry) -> optional LoRA (peft) -> document-level splits, packed chunks ->
AdamW with linear warm-up and cosine decay -> steps (gradient accumulation, clipping), evaluation every N steps
on the domain validation split and on a general text (to watch forgetting), best checkpoint, resume state,
early stopping -> the best weights saved with ``save_pretrained`` -> final.json and curves.png.

Run directory: config.json, metrics.jsonl (a row per step and per evaluation), model/ (the best weights and the
tokenizer, a plain ``from_pretrained`` directory; LoRA adapters merged into it), adapter/ (LoRA only: the
peft adapter), last.pt (resume), final.json, curves.png.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lmlab import rundir, runtime
from lmlab.config import config_differences, recipe_config
from lmlab.data.eval_texts import head, load_eval_text
from lmlab.errors import LmlabError
from lmlab.hf import registry
from lmlab.hf.domain_data import Document, limit, load_domain, pack
from lmlab.report.plots import plot_finetune_curves

MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
# Keys that say where and how long a run runs, not what it computes: a run may resume across them.
RESUMABLE_KEYS = {("train", "steps"), ("train", "threads"), ("train", "device"), ("train", "patience")}


def configure(model: str | None, dataset: str | None, preset: str, overrides: list[str] = (),
              lora: bool = False) -> dict[str, Any]:
    return recipe_config("finetune", preset, {"model.name": model, "data.dataset": dataset,
                                              "lora.enabled": True if lora else None}, overrides)


def run(cfg: dict[str, Any], out: Path, resume: bool = False) -> dict[str, Any]:
    from accelerate import Accelerator

    out = Path(out)
    data_cfg, train_cfg, optim_cfg, lora_cfg = cfg["data"], cfg["train"], cfg["optim"], cfg["lora"]
    if train_cfg["threads"] > 0:
        torch.set_num_threads(train_cfg["threads"])
    device = train_cfg["device"]
    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=train_cfg["mixed_precision"])
    main = accelerator.is_main_process
    _prepare_run_dir(out, cfg, resume, main)
    runtime.seed_everything(train_cfg["seed"])

    # --- model -------------------------------------------------------------------------------------------
    model, tokenizer = registry.load(cfg["model"]["name"])
    total_params = sum(p.numel() for p in model.parameters())
    if lora_cfg["enabled"]:
        model = _with_lora(model, lora_cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_params = sum(p.numel() for p in trainable)

    # --- data: document-level splits, packed with the model's own tokenizer -----------------------------
    splits = load_domain(data_cfg["dataset"])
    train_docs = limit(splits.train, data_cfg["train_docs"], data_cfg["seed"])
    train_chunks = pack(train_docs, tokenizer, data_cfg["seq_len"])
    if data_cfg["train_tokens"]:
        train_chunks = train_chunks[: max(1, data_cfg["train_tokens"] // data_cfg["seq_len"])]
    valid_chunks = pack(splits.valid, tokenizer, data_cfg["seq_len"])[: data_cfg["valid_chunks"]]
    general_chunks = _general_chunks(train_cfg, tokenizer, data_cfg["seq_len"])
    world = accelerator.num_processes
    if train_cfg["batch_size"] % train_cfg["grad_accum"]:
        raise LmlabError("train.batch_size must be a multiple of train.grad_accum")
    if len(train_chunks) < train_cfg["batch_size"] * world:
        raise LmlabError(f"the training set has {len(train_chunks)} chunks of {data_cfg['seq_len']} tokens, fewer "
                         f"than one batch ({train_cfg['batch_size']} x {world} processes): use more data or a "
                         "smaller train.batch_size")

    # --- optimiser and schedule -----------------------------------------------------------------------------
    lr = lora_cfg["lr"] if lora_cfg["enabled"] else optim_cfg["lr"]
    # fused: one kernel for all tensors (CPU and CUDA), as transformers.Trainer uses by default
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=optim_cfg["weight_decay"], betas=(0.9, 0.95), fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(train_cfg["steps"], optim_cfg["warmup_steps"], optim_cfg["min_lr_ratio"]))
    model, optimizer = accelerator.prepare(model, optimizer)

    state = {"step": 0, "best_loss": math.inf, "best_step": -1, "bad_evals": 0, "train_seconds": 0.0,
             "tokens": 0}
    if resume and (out / rundir.LAST).is_file():
        state = _restore(out / rundir.LAST, accelerator.unwrap_model(model), optimizer, schedule)
        accelerator.print(f"resuming at step {state['step']}")
    if main:
        rundir.write_json(out / rundir.CONFIG, cfg)

    def evaluate(step: int) -> dict[str, float]:
        plain = accelerator.unwrap_model(model)  # not through DDP: no collective calls while only some ranks score
        row = {"kind": "eval", "step": step, "valid_loss": _mean_loss(plain, valid_chunks, accelerator)}
        if general_chunks is not None:
            row["general_loss"] = _mean_loss(plain, general_chunks, accelerator)
        for key in ("valid", "general"):
            if f"{key}_loss" in row:
                row[f"{key}_ppl"] = math.exp(row[f"{key}_loss"])
        return row

    if state["step"] == 0 and main:
        row = evaluate(0)
        rundir.append_jsonl(out / rundir.METRICS, row)
        state["initial"] = row
        accelerator.print(f"step 0: valid ppl {row['valid_ppl']:.3f}"
                          + (f", general ppl {row['general_ppl']:.3f}" if "general_ppl" in row else ""))

    # --- steps ----------------------------------------------------------------------------------------------
    micro = train_cfg["batch_size"] // train_cfg["grad_accum"]
    stopped_early = False
    progress = tqdm(total=train_cfg["steps"], initial=state["step"], desc="finetune", disable=not main,
                    dynamic_ncols=True)
    model.train()
    while state["step"] < train_cfg["steps"]:
        step = state["step"] + 1
        started = time.perf_counter()
        rows = _batch_rows(step, train_cfg["batch_size"] * world, len(train_chunks), data_cfg["seed"])
        rows = rows[accelerator.process_index::world]  # each process takes its share of the global batch
        loss_sum = torch.zeros((), device=accelerator.device)
        for k in range(train_cfg["grad_accum"]):
            x = train_chunks[rows[k * micro:(k + 1) * micro]].to(accelerator.device)
            with accelerator.autocast():
                loss = model(input_ids=x, labels=x).loss / train_cfg["grad_accum"]
            accelerator.backward(loss)
            loss_sum += loss.detach()
        if world > 1:  # log the loss of the global batch, not of process 0's share
            loss_sum = accelerator.reduce(loss_sum, "mean")
        loss_sum = loss_sum.item()  # one device sync per step, not per micro-batch
        grad_norm = accelerator.clip_grad_norm_(trainable, optim_cfg["grad_clip"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        state["train_seconds"] += seconds
        tokens = train_cfg["batch_size"] * world * data_cfg["seq_len"]
        state["tokens"] += tokens
        state["step"] = step
        if not math.isfinite(loss_sum):
            raise LmlabError(f"the training loss became {loss_sum} at step {step}: lower optim.lr")
        if main:
            rundir.append_jsonl(out / rundir.METRICS, {
                "kind": "train", "step": step, "train_loss": loss_sum, "lr": schedule.get_last_lr()[0],
                "grad_norm": float(grad_norm), "tokens": state["tokens"], "tokens_per_s": tokens / seconds})
        progress.update(1)
        progress.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{tokens / seconds:.0f}")
        if step % train_cfg["eval_every"] == 0 or step == train_cfg["steps"]:
            model.eval()
            row = evaluate(step)
            model.train()
            improved = row["valid_loss"] < state["best_loss"]
            if improved:
                state.update(best_loss=row["valid_loss"], best_step=step, bad_evals=0)
                _save_best(accelerator, model, tokenizer, out, lora_cfg["enabled"])
            else:
                state["bad_evals"] += 1
            if main:
                rundir.append_jsonl(out / rundir.METRICS, row)
                _checkpoint(out / rundir.LAST, accelerator.unwrap_model(model), optimizer, schedule, state)
            accelerator.print(f"step {step}: valid ppl {row['valid_ppl']:.3f}"
                              + (f", general ppl {row['general_ppl']:.3f}" if "general_ppl" in row else "")
                              + (" (best)" if improved else ""))
            if train_cfg["patience"] and state["bad_evals"] >= train_cfg["patience"]:
                stopped_early = True
                break
    progress.close()
    accelerator.wait_for_everyone()

    # --- the result: best weights as a plain from_pretrained directory --------------------------------------
    if main and lora_cfg["enabled"]:
        _merge_adapter(cfg["model"]["name"], out)
    initial = state.get("initial") or rundir.read_jsonl(out / rundir.METRICS)[0]
    final = {
        "config": cfg, "model": cfg["model"]["name"], "mode": "lora" if lora_cfg["enabled"] else "full",
        "params_total": total_params, "params_trainable": trainable_params,
        "train_docs": len(train_docs), "train_chunks": len(train_chunks),
        "train_tokens_available": int(train_chunks.numel()), "tokens_trained": state["tokens"],
        "epochs": state["tokens"] / max(1, train_chunks.numel()),
        "steps": state["step"], "stopped_early": stopped_early,
        "train_seconds": state["train_seconds"], "train_tokens_per_s": state["tokens"] / max(state["train_seconds"], 1e-9),
        "best_step": state["best_step"], "best_valid_loss": state["best_loss"],
        "best_valid_ppl": math.exp(state["best_loss"]),
        "initial_valid_ppl": initial["valid_ppl"], "initial_general_ppl": initial.get("general_ppl"),
        "model_dir": str(out / MODEL_DIR), "device": str(accelerator.device), "processes": world,
        "threads": torch.get_num_threads(),
    }
    if main:
        rows = rundir.read_jsonl(out / rundir.METRICS)
        best_eval = next((r for r in rows if r["kind"] == "eval" and r["step"] == state["best_step"]), None)
        final["best_general_ppl"] = best_eval.get("general_ppl") if best_eval else None
        rundir.write_json(out / rundir.FINAL, final)
        plot_finetune_curves(rows, out / rundir.CURVES,
                             f"{final['model']} {final['mode']} fine-tune on {data_cfg['dataset']}")
        (out / rundir.LAST).unlink(missing_ok=True)  # the run is finished; the resume state is 1-2 GB
        accelerator.print(f"best valid ppl {final['best_valid_ppl']:.3f} at step {state['best_step']} "
                          f"(from {final['initial_valid_ppl']:.3f}); {final['train_tokens_per_s']:.0f} tokens/s; "
                          f"model in {out / MODEL_DIR}")
    return final


# --- helpers ------------------------------------------------------------------------------------------------

def _prepare_run_dir(out: Path, cfg: dict, resume: bool, main: bool) -> None:
    if (out / rundir.FINAL).is_file() and not resume:
        raise LmlabError(f"{out} already holds a finished fine-tune: choose another --out or remove it")
    if (out / rundir.CONFIG).is_file():
        if not resume:
            raise LmlabError(f"{out} holds an unfinished fine-tune: add --resume to continue it, or remove it")
        old = rundir.read_json(out / rundir.CONFIG)
        changed = config_differences(old, cfg) - RESUMABLE_KEYS
        if changed:
            raise LmlabError(f"cannot resume {out}: its config differs in {', '.join('.'.join(k) for k in sorted(changed))}")
    elif resume and main:
        print(f"lmlab: nothing to resume in {out}; starting a new run", flush=True)
    if main:
        out.mkdir(parents=True, exist_ok=True)


def _with_lora(model, lora_cfg: dict):
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in lora_cfg["target_modules"] if m not in names]
    if missing:
        raise LmlabError(f"lora.target_modules {missing} are not modules of this model: choose from "
                         f"{sorted(n for n in names if n.endswith(('proj', 'attn', 'fc', 'c_fc', 'c_proj')))}")
    config = LoraConfig(r=lora_cfg["r"], lora_alpha=lora_cfg["alpha"], lora_dropout=lora_cfg["dropout"],
                        target_modules=list(lora_cfg["target_modules"]), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _general_chunks(train_cfg: dict, tokenizer, seq_len: int):
    if not train_cfg["general_corpus"]:
        return None
    # enough characters for the chunks asked for (about 4 characters a token), cut at a line boundary
    text = head(load_eval_text(train_cfg["general_corpus"]).text, 6 * seq_len * train_cfg["general_chunks"])
    return pack([Document("general", text)], tokenizer, seq_len)[: train_cfg["general_chunks"]]


def _warmup_cosine(total: int, warmup: int, floor: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


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
def _mean_loss(model, chunks: torch.Tensor, accelerator, micro: int = 4) -> float:
    """Mean next-token loss over the chunks (every chunk has seq_len - 1 targets, so chunk means average)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(chunks), micro):
        x = chunks[i:i + micro].to(accelerator.device)
        with accelerator.autocast():
            total += model(input_ids=x, labels=x).loss.item() * len(x)
    model.train(was_training)
    return total / len(chunks)


def _save_best(accelerator, model, tokenizer, out: Path, lora: bool) -> None:
    if not accelerator.is_main_process:
        return
    # for a peft model, save_pretrained writes the adapter only
    registry.save(accelerator.unwrap_model(model), tokenizer, out / (ADAPTER_DIR if lora else MODEL_DIR))


def _merge_adapter(base_name: str, out: Path) -> None:
    """Base model + best adapter, merged: a plain directory that ``from_pretrained`` loads without peft."""
    from peft import PeftModel

    base, tokenizer = registry.load(base_name)
    registry.save(PeftModel.from_pretrained(base, out / ADAPTER_DIR).merge_and_unload(), tokenizer, out / MODEL_DIR)


def _checkpoint(path: Path, model, optimizer, schedule, state: dict) -> None:
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    rundir.save_checkpoint(path, {"model": trainable, "optimizer": optimizer.state_dict(),
                                  "schedule": schedule.state_dict(), "state": state,
                                  "rng": torch.get_rng_state()})


def _restore(path: Path, model, optimizer, schedule) -> dict:
    ckpt = rundir.load_checkpoint(path)
    missing = set(ckpt["model"]) - {n for n, _ in model.named_parameters()}
    if missing:
        raise LmlabError(f"{path} does not match this model ({len(missing)} unknown weights): remove it to start over")
    model.load_state_dict(ckpt["model"], strict=False)
    optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["schedule"])
    torch.set_rng_state(ckpt["rng"])
    return ckpt["state"]

"""lmlab dpo: preference alignment with TRL's DPOTrainer, measured before and after on held-out data.

The steps: config -> starting model (policy and reference) and tokenizer -> preference pairs (train / held
out) -> measurements of the starting model -> DPO (TRL; reference log-probs precomputed on CPU) -> the same
measurements of the trained policy against the reference -> model saved with ``save_pretrained`` (LoRA
merged) -> before.json, after.json, metrics.jsonl (TRL's per-step log), curves.png.

Measured, before and after: preference accuracy (summed and per-token log-likelihood of chosen vs rejected),
mean log-likelihood margin, DPO's implicit-reward accuracy and margin (zero for the starting model, which is
its own reference), per-token KL from the reference on held-out prompts, PubMedQA test accuracy (ft-eval's
harness), general perplexity, and greedy replies to held-out prompts.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lmlab import rundir
from lmlab.config import recipe_config
from lmlab.data.eval_texts import head, load_eval_text
from lmlab.errors import LmlabError
from lmlab.hf import evaluation, preferences, registry
from lmlab.hf.domain_data import pubmedqa_records
from lmlab.report.plots import plot_dpo_curves

MODEL_DIR = "model"


def configure(model: str | None, pairs: str | None, preset: str, overrides: list[str] = (),
              lora: bool = False) -> dict[str, Any]:
    return recipe_config("dpo", preset, {"model.name": model, "pairs.source": pairs,
                                         "lora.enabled": True if lora else None}, overrides)


def run(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    out = Path(out)
    if (out / "after.json").is_file():
        raise LmlabError(f"{out} already holds a finished DPO run: choose another --out or remove it")
    train_cfg, dpo_cfg, lora_cfg, pair_cfg = cfg["train"], cfg["dpo"], cfg["lora"], cfg["pairs"]
    if train_cfg["threads"] > 0:
        torch.set_num_threads(train_cfg["threads"])
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_json(out / rundir.CONFIG, cfg)
    torch.manual_seed(train_cfg["seed"])

    policy, tokenizer = registry.load(cfg["model"]["name"])
    reference, _ = registry.load(cfg["model"]["name"])
    reference.eval()
    pairs = preferences.load_pairs(pair_cfg["source"], tokenizer, pair_cfg["context_tokens"], dpo_cfg["max_length"])
    train_pairs = pairs["train"][: pair_cfg["train_pairs"] or None]
    eval_pairs = pairs["eval"][: pair_cfg["eval_pairs"] or None]
    print(f"[dpo] {len(train_pairs)} training pairs, {len(eval_pairs)} held-out pairs ({pair_cfg['source']})", flush=True)

    # --- before: the starting model is the policy and its own reference ------------------------------------
    reference_logps = preferences.reply_logps(reference, tokenizer, eval_pairs, dpo_cfg["max_length"])
    before = _measure(cfg, reference, tokenizer, eval_pairs, reference_logps, reference_logps)
    rundir.write_json(out / "before.json", before)
    _print("before", before)

    # --- DPO with TRL --------------------------------------------------------------------------------------------
    started = time.perf_counter()
    trainer = _trainer(cfg, policy, tokenizer, train_pairs, out)
    trainer.train()
    train_seconds = time.perf_counter() - started
    log = [dict(row, kind="train") for row in trainer.state.log_history if "loss" in row]
    for row in log:
        rundir.append_jsonl(out / rundir.METRICS, row)
    trained = trainer.model
    if lora_cfg["enabled"]:
        trained = trained.merge_and_unload()
    trained.eval()
    registry.save(trained, tokenizer, out / MODEL_DIR)
    del trainer
    shutil.rmtree(out / "trainer", ignore_errors=True)  # TRL's output_dir: nothing is saved there (save_strategy="no")

    # --- after ---------------------------------------------------------------------------------------------------
    policy_logps = preferences.reply_logps(trained, tokenizer, eval_pairs, dpo_cfg["max_length"], reference=reference)
    after = _measure(cfg, trained, tokenizer, eval_pairs, policy_logps, reference_logps)
    after.update(train_seconds=train_seconds, steps=len(log), train_pairs=len(train_pairs),
                 model_dir=str(out / MODEL_DIR))
    rundir.write_json(out / "after.json", after)
    _print("after", after)
    if log:
        plot_dpo_curves(log, out / rundir.CURVES, f"DPO on {pair_cfg['source']} pairs, beta={dpo_cfg['beta']}")
    return after


def _measure(cfg, policy, tokenizer, pairs, policy_logps, reference_logps) -> dict[str, Any]:
    e, dpo_cfg = cfg["eval"], cfg["dpo"]
    result = preferences.preference_metrics(policy_logps, reference_logps, dpo_cfg["beta"])
    records = pubmedqa_records()["test"][: e["pubmedqa_questions"]]
    qa = evaluation.pubmedqa_accuracy(policy, tokenizer, records, e["pubmedqa_max_prompt_tokens"])
    result.update(pubmedqa_acc=qa["accuracy"], pubmedqa=qa)
    text = head(load_eval_text(e["general_corpus"]).text, e["general_chars"])
    score = evaluation.score_texts(policy, tokenizer, [text], e["window"], e["stride"]).as_dict()
    result["general_ppl"] = {e["general_corpus"]: score["token_ppl"]}
    result["general_word_ppl"] = {e["general_corpus"]: score["word_ppl"]}
    # the prompts are already in the chat template, so no start-of-document token before them
    result["generations"] = [{"prompt": p.prompt, "reply": evaluation.complete(policy, tokenizer, p.prompt, e["max_new_tokens"],
                                                                              1.2, start=False)}
                             for p in pairs[: e["generations"]]]
    result["model"] = cfg["model"]["name"]
    return result


def _trainer(cfg, policy, tokenizer, pairs, out: Path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    t, d, lora = cfg["train"], cfg["dpo"], cfg["lora"]
    use_cpu = t["device"] == "cpu" or (t["device"] == "auto" and not torch.cuda.is_available())
    args = DPOConfig(
        output_dir=str(out / "trainer"), max_steps=t["steps"], per_device_train_batch_size=t["batch_size"] // t["grad_accum"],
        gradient_accumulation_steps=t["grad_accum"], learning_rate=lora["lr"] if lora["enabled"] else t["lr"],
        lr_scheduler_type="cosine", warmup_steps=t["warmup_steps"], logging_steps=1, save_strategy="no",
        report_to=[], seed=t["seed"], use_cpu=use_cpu, bf16=not use_cpu and torch.cuda.is_bf16_supported(),
        beta=d["beta"], max_length=d["max_length"], loss_type=[d["loss_type"]],
        precompute_ref_log_probs=d["precompute_ref"], dataloader_num_workers=0, disable_tqdm=False,
    )
    dataset = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    peft_config = None
    if lora["enabled"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                 target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM")
    return DPOTrainer(model=policy, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft_config)


def _print(label: str, m: dict) -> None:
    general = next(iter(m["general_ppl"].values()))
    print(f"[dpo {label}] preference acc {m['preference_acc']:.3f} (per token {m['preference_acc_normalized']:.3f}), "
          f"logp margin {m['logp_margin']:.2f}, reward acc {m['reward_acc']:.3f}, reward margin {m['reward_margin']:.3f}, "
          f"KL {m['kl_from_reference']:.4f}, PubMedQA {m['pubmedqa_acc']:.3f}, general ppl {general:.2f}", flush=True)
    if not math.isfinite(m["logp_margin"]):
        raise LmlabError("a log-likelihood is not finite: the model diverged; lower train.lr")

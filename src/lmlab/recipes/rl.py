"""lmlab rl: reinforcement learning with a verifiable reward (TRL's GRPO) on PubMedQA, measured before and after.

The steps: config -> starting model (policy; GRPO's reference is the same weights) and tokenizer -> prompts:
lm-eval's PubMedQA prompt for each *training* question (never a test id), with its gold verdict -> PubMedQA test
accuracy before (lm-eval protocol, as ft-eval) -> GRPO (TRL): for each prompt ``num_generations`` short
completions are sampled, each rewarded 1 when its first word is the gold verdict and 0 otherwise; a
completion's advantage is its reward minus its group's mean, and the policy gradient moves towards the better
completions, with a KL penalty to the reference (``grpo.beta``) -> PubMedQA test accuracy after -> the policy
saved with ``save_pretrained`` (LoRA merged), before.json / after.json (lmlab.results.TaskEvaluation), metrics.jsonl
(TRL's per-step log: reward, its spread, KL), curves.png.

Where this sits (docs/alignment.md): PPO with a learned reward model needs a reward model and a value network;
GRPO (Shao et al., 2024, DeepSeekMath) drops the value network by comparing completions of one prompt, and a
programmatic reward (the verdict is right or wrong) drops the reward model; DPO needs neither but learns only
from fixed pairs. TRL owns the loop here, as in ``lmlab dpo``; a run does not resume.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import torch

from lmlab import results
from lmlab.config import RlConfig, load_recipe, to_dict
from lmlab.errors import LmlabError
from lmlab.pretrained import pubmedqa, registry
from lmlab.pretrained.domain_data import pubmedqa_records
from lmlab.pretrained.lora import lora_config
from lmlab.report.plots import plot_rl_curves
from lmlab.training import lifecycle, runtime, trl_run

log = logging.getLogger("lmlab")


def configure(model: str | None, preset: str, overrides: list[str] = ()) -> RlConfig:
    return load_recipe("rl", preset, {"model.name": model}, overrides)


def verdict_reward(completions: list[str], decision: list[str], **_) -> list[float]:
    """1.0 when a completion's first word is the gold verdict (yes, no or maybe), else 0.0."""
    out = []
    for text, gold in zip(completions, decision):
        words = re.findall(r"[a-z]+", text.lower())
        out.append(1.0 if words and words[0] == gold else 0.0)
    return out


def prompts(cfg: RlConfig, tokenizer) -> list[dict]:
    """lm-eval's prompt of each training question, cut to ``data.prompt_tokens``, with its gold verdict."""
    train = pubmedqa_records()["train"][: cfg.data.train_questions or None]
    return [{"prompt": tokenizer.decode(pubmedqa.lm_eval_prompt_ids(tokenizer, r, cfg.data.prompt_tokens)),
             "decision": r.decision} for r in train]


def run(cfg: RlConfig, out: Path) -> results.TaskEvaluation:
    out = Path(out)
    if (out / results.AFTER).is_file():
        raise LmlabError(f"{out} already holds a finished RL run: choose another --out or remove it")
    if cfg.train.batch_size % cfg.grpo.num_generations:
        raise LmlabError(f"train.batch_size={cfg.train.batch_size} must be a multiple of grpo.num_generations="
                         f"{cfg.grpo.num_generations} (each prompt's group is in one batch)")
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    lifecycle.prepare(out, cfg, resume=False)
    torch.manual_seed(cfg.train.seed)
    policy, tokenizer = registry.load(cfg.model.name)
    policy.to(runtime.resolve_device(cfg.train.device))  # measured before training on the device it trains on
    data = prompts(cfg, tokenizer)
    log.info("[rl] %d training prompts, %d completions per prompt, reward: the correct verdict", len(data),
             cfg.grpo.num_generations)
    before = _measure(cfg, policy, tokenizer)
    results.write(out / results.BEFORE, before)
    _report("before", before)

    trainer = _trainer(cfg, policy, tokenizer, data, out)
    trained, history, seconds = trl_run.train_and_save(trainer, tokenizer, out, cfg.lora.enabled, cfg.log.tensorboard,
                                                       "reward")
    del trainer

    after = _measure(cfg, trained, tokenizer)
    after.extra.update(train_seconds=seconds, steps=len(history), train_prompts=len(data),
                       reward_first=history[0]["reward"] if history else None,
                       reward_last=history[-1]["reward"] if history else None)
    results.write(out / results.AFTER, after)
    _report("after", after)
    if history:
        plot_rl_curves(history, out / "curves.png", f"GRPO on PubMedQA verdicts, {cfg.model.name}")
    return after


def _measure(cfg: RlConfig, model, tokenizer) -> results.TaskEvaluation:
    started = time.perf_counter()
    e = cfg.eval
    test = pubmedqa_records()["test"][: e.pubmedqa_questions]
    qa = pubmedqa.evaluate(model, tokenizer, test, "lm-eval", 0, max_tokens=e.max_prompt_tokens,
                           resamples=e.resamples, seed=cfg.train.seed)
    return results.TaskEvaluation(model=cfg.model.name, pubmedqa_settings={"lm-eval 0-shot": qa},
                                  settings=to_dict(cfg), seconds=time.perf_counter() - started)


def _trainer(cfg: RlConfig, policy, tokenizer, data: list[dict], out: Path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    t, g, lora = cfg.train, cfg.grpo, cfg.lora
    use_cpu = runtime.resolve_device(t.device) == "cpu"
    args = GRPOConfig(
        output_dir=str(out / "trainer"), max_steps=t.steps, per_device_train_batch_size=t.batch_size,
        num_generations=g.num_generations, max_completion_length=g.max_completion_tokens, temperature=g.temperature,
        beta=g.beta, learning_rate=lora.lr if lora.enabled else t.lr, lr_scheduler_type="cosine",
        warmup_steps=t.warmup_steps, logging_steps=1, save_strategy="no", report_to=[], seed=t.seed,
        use_cpu=use_cpu, bf16=not use_cpu and torch.cuda.is_bf16_supported(), dataloader_num_workers=0,
    )
    return GRPOTrainer(model=policy, reward_funcs=verdict_reward, args=args, train_dataset=Dataset.from_list(data),
                       processing_class=tokenizer, peft_config=lora_config(lora) if lora.enabled else None)


def _report(label: str, m: results.TaskEvaluation) -> None:
    r = m.pubmedqa_settings["lm-eval 0-shot"]
    log.info("[rl %s] PubMedQA accuracy %.3f [%.3f, %.3f], macro-F1 %.3f on %d test questions (answers %s)", label,
             r["accuracy"], *r["accuracy_ci95"], r["macro_f1"], r["questions"], r["predicted"])

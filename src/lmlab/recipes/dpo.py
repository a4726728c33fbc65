"""lmlab dpo: preference alignment with TRL's DPOTrainer, measured before and after on held-out data.

The steps: config -> pair source checked -> starting model (policy and reference) and tokenizer -> preference
pairs (train / held out) -> measurements of the starting model -> DPO (TRL; reference log-probs precomputed
on CPU) -> the same measurements of the trained policy against the reference -> model saved with
``save_pretrained`` (LoRA merged) -> before.json, after.json (lmlab.results.PreferenceMeasurement),
metrics.jsonl (TRL's per-step log, through lmlab's metrics logger), curves.png.

Measured, before and after: preference accuracy (summed and per-token log-likelihood of chosen vs rejected),
mean log-likelihood margin, DPO's implicit-reward accuracy and margin (zero for the starting model, which is
its own reference), per-token KL from the reference on held-out prompts, PubMedQA test accuracy (ft-eval's
harness), general perplexity, and greedy replies to held-out prompts.

TRL owns the training loop here (schedule, optimiser, checkpoints), so of lmlab's training layer DPO uses the
run directory rules, the metrics logger and the LoRA config; a DPO run does not resume (it restarts).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from lmlab import results
from lmlab.config import DpoConfig, load_recipe
from lmlab.data.eval_texts import head, load_eval_text
from lmlab.data.normalize import split_sentences, tokenize
from lmlab.data.vocab import EOS
from lmlab.errors import LmlabError
from lmlab.metrics.text_stats import text_statistics
from lmlab.pretrained import completion, perplexity, preferences, pubmedqa, registry, spin
from lmlab.pretrained.domain_data import pubmedqa_records
from lmlab.pretrained.lora import lora_config
from lmlab.report.plots import plot_dpo_curves
from lmlab.training import lifecycle, rundir, runtime, trl_run

log = logging.getLogger("lmlab")
SPIN_TRAIN, SPIN_EVAL = 1000, 300  # pubmed-spin pairs when the config says 0 (every pair): enough to measure


def configure(model: str | None, pairs: str | None, preset: str, overrides: list[str] = (),
              lora: bool = False) -> DpoConfig:
    return load_recipe("dpo", preset, {"model.name": model, "pairs.source": pairs,
                                       "lora.enabled": True if lora else None}, overrides)


def run(cfg: DpoConfig, out: Path) -> results.PreferenceMeasurement:
    out = Path(out)
    if (out / results.AFTER).is_file():
        raise LmlabError(f"{out} already holds a finished DPO run: choose another --out or remove it")
    preferences.check_source(cfg.pairs.source)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    lifecycle.prepare(out, cfg, resume=False)
    torch.manual_seed(cfg.train.seed)

    policy, tokenizer = registry.load(cfg.model.name)
    reference, _ = registry.load(cfg.model.name)
    # the reference is scored beside the trained policy, which the trainer leaves on the run's device
    reference.to(runtime.resolve_device(cfg.train.device)).eval()
    pairs = _pairs(cfg, reference, tokenizer)
    train_pairs = pairs["train"][: cfg.pairs.train_pairs or None]
    eval_pairs = pairs["eval"][: cfg.pairs.eval_pairs or None]
    log.info("[dpo] %d training pairs, %d held-out pairs (%s)", len(train_pairs), len(eval_pairs), cfg.pairs.source)

    # --- before: the starting model is the policy and its own reference ------------------------------------
    reference_logps = preferences.reply_logps(reference, tokenizer, eval_pairs, cfg.dpo.max_length)
    before = _measure(cfg, reference, tokenizer, eval_pairs, reference_logps, reference_logps)
    results.write(out / results.BEFORE, before)
    _report("before", before)

    # --- DPO with TRL --------------------------------------------------------------------------------------------
    # TRL precomputes reference log-probs for every pair it is given: give it the pairs the steps will see
    seen = train_pairs[: cfg.train.steps * cfg.train.batch_size]
    trainer = _trainer(cfg, policy, tokenizer, seen, out)
    trained, history, train_seconds = trl_run.train_and_save(trainer, tokenizer, out, cfg.lora.enabled,
                                                             cfg.log.tensorboard, "loss")
    del trainer

    # --- after ---------------------------------------------------------------------------------------------------
    policy_logps = preferences.reply_logps(trained, tokenizer, eval_pairs, cfg.dpo.max_length, reference=reference)
    after = _measure(cfg, trained, tokenizer, eval_pairs, policy_logps, reference_logps)
    after.train_seconds, after.steps, after.train_pairs = train_seconds, len(history), len(seen)
    after.extra["train_pairs_available"] = len(train_pairs)
    after.change_vs_before = preferences.paired_change(
        preferences.pair_scores(reference_logps, reference_logps, cfg.dpo.beta),
        preferences.pair_scores(policy_logps, reference_logps, cfg.dpo.beta))
    after.model_dir = str(out / results.MODEL_DIR)
    after.kl_on_samples = preferences.sampled_kl(trained, reference, tokenizer,
                                                 [p.prompt for p in eval_pairs[: cfg.eval.kl_samples]],
                                                 cfg.eval.max_new_tokens, cfg.train.seed)
    results.write(out / results.AFTER, after)
    _report("after", after)
    if history:
        plot_dpo_curves(history, out / rundir.CURVES, f"DPO on {cfg.pairs.source} pairs, beta={cfg.dpo.beta}")
    return after


def _pairs(cfg: DpoConfig, start_model, tokenizer) -> dict[str, list]:
    """The pair source's train and held-out pairs, cut to ``dpo.max_length``. ``pubmed-spin`` samples its
    rejected replies from the starting model (once per model and settings: a cache file)."""
    p = cfg.pairs
    if p.source != "pubmed-spin":
        return preferences.load_pairs(p.source, tokenizer, p.context_tokens, cfg.dpo.max_length)
    sizes = {"train": p.train_pairs or SPIN_TRAIN, "eval": p.eval_pairs or SPIN_EVAL}
    settings = {"context_tokens": p.context_tokens, "sample_tokens": p.sample_tokens, "seed": cfg.train.seed}
    root = registry.cache_dir().parent / "pairs"
    made = {split: spin.spin_pairs(start_model, tokenizer, doc_split, n, p.context_tokens, p.sample_tokens,
                                   cfg.train.seed, cache=spin.cache_path(root, cfg.model.name, doc_split,
                                                                         dict(settings, count=n)))
            for split, doc_split, n in (("train", "train", sizes["train"]), ("eval", "valid", sizes["eval"]))}
    return {split: [preferences.fit(x, tokenizer, cfg.dpo.max_length) for x in ps] for split, ps in made.items()}


def _measure(cfg: DpoConfig, policy, tokenizer, pairs, policy_logps, reference_logps) -> results.PreferenceMeasurement:
    e = cfg.eval
    metrics = preferences.preference_metrics(policy_logps, reference_logps, cfg.dpo.beta)
    records = pubmedqa_records()["test"][: e.pubmedqa_questions]
    qa = pubmedqa.evaluate(policy, tokenizer, records, "lm-eval", 0, max_tokens=e.pubmedqa_max_prompt_tokens)
    text = head(load_eval_text(e.general_corpus).text, e.general_chars)
    score = perplexity.score_texts(policy, tokenizer, [text], e.window, e.stride).as_dict()
    # the prompts are already in the chat template, so no start-of-document token before them
    generations = []
    for p in pairs[: e.generations]:
        reply = completion.complete(policy, tokenizer, p.prompt, e.max_new_tokens, 1.2, start=False)
        words = [w for sentence in split_sentences(reply) for w in [*tokenize(sentence), EOS]]
        generations.append({"prompt": p.prompt, "reply": reply, "stats": text_statistics(words)})
    return results.PreferenceMeasurement(
        **metrics, pubmedqa_acc=qa["accuracy"], pubmedqa=qa, general_ppl={e.general_corpus: score["token_ppl"]},
        general_word_ppl={e.general_corpus: score["word_ppl"]}, generations=generations, model=cfg.model.name)


def _trainer(cfg: DpoConfig, policy, tokenizer, pairs, out: Path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    t, d, lora = cfg.train, cfg.dpo, cfg.lora
    use_cpu = runtime.resolve_device(t.device) == "cpu"
    args = DPOConfig(
        output_dir=str(out / "trainer"), max_steps=t.steps, per_device_train_batch_size=t.batch_size // t.grad_accum,
        gradient_accumulation_steps=t.grad_accum, learning_rate=lora.lr if lora.enabled else t.lr,
        lr_scheduler_type="cosine", warmup_steps=t.warmup_steps, logging_steps=1, save_strategy="no",
        report_to=[], seed=t.seed, use_cpu=use_cpu, bf16=not use_cpu and torch.cuda.is_bf16_supported(),
        beta=d.beta, max_length=d.max_length, loss_type=[d.loss_type],
        precompute_ref_log_probs=d.precompute_ref, dataloader_num_workers=0, disable_tqdm=False,
    )
    dataset = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    return DPOTrainer(model=policy, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=lora_config(lora) if lora.enabled else None)


def _report(label: str, m: results.PreferenceMeasurement) -> None:
    general = next(iter(m.general_ppl.values()))
    if m.kl_on_samples:
        log.info("[dpo %s] KL from the reference on %d own samples: %.4f nats/token (exact along the samples %.4f)",
                 label, m.kl_on_samples["samples"], m.kl_on_samples["mc"], m.kl_on_samples["exact"])
    log.info("[dpo %s] preference acc %.3f (per token %.3f), logp margin %.2f, reward acc %.3f, reward margin %.3f, "
             "KL %.4f, PubMedQA %.3f, general ppl %.2f", label, m.preference_acc, m.preference_acc_normalized,
             m.logp_margin, m.reward_acc, m.reward_margin, m.kl_from_reference, m.pubmedqa_acc, general)
    if not math.isfinite(m.logp_margin):
        raise LmlabError("a log-likelihood is not finite: the model diverged; lower train.lr")

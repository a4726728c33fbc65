"""lmlab ft-eval: one harness for a pretrained model and its fine-tunes (lmlab.pretrained's task modules).

The steps: model -> domain perplexity (held-out documents) -> general perplexity (WikiText-2 raw test,
Tiny Shakespeare) in token, word and byte units -> PubMedQA accuracy on the official test ids (with the
majority-class baseline) -> fill-in-the-blank accuracy -> greedy completions of fixed prompts. The result is
one lmlab.results.ModelEvaluation per model (the CLI prints JSON, or a before/after table for two or more).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from lmlab import results
from lmlab.config import FtEvalConfig, load_recipe, to_dict
from lmlab.data.eval_texts import head, load_eval_text
from lmlab.errors import LmlabError
from lmlab.pretrained import cloze, completion, perplexity, pubmedqa, registry
from lmlab.pretrained.domain_data import load_domain, pubmedqa_records
from lmlab.training import runtime

log = logging.getLogger("lmlab")
GENERAL_NAMES = {"wikitext2-raw": "wikitext2", "shakespeare": "shakespeare"}


def configure(preset: str, overrides: list[str] = ()) -> FtEvalConfig:
    return load_recipe("ft_eval", preset, overrides=overrides)


def _load(name: str, cfg: FtEvalConfig):
    """The model in eval mode on the configured device (fp32; TF32 matrix products on a GPU)."""
    model, tokenizer = registry.load(name)
    device = runtime.resolve_device(cfg.run.device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    return model.to(device).eval(), tokenizer


def evaluate_model(name: str, cfg: FtEvalConfig) -> results.ModelEvaluation:
    started = time.perf_counter()
    model, tokenizer = _load(name, cfg)
    p, q, c = cfg.perplexity, cfg.pubmedqa, cfg.cloze
    splits = load_domain(p.domain)
    texts = {p.domain: [d.text for d in (splits.test[: p.domain_docs] if p.domain_docs else splits.test)]}
    general = {spec: load_eval_text(spec).text for spec in p.general}  # read once: scored in part, terms from all
    for spec, text in general.items():
        texts[GENERAL_NAMES.get(spec, spec)] = [head(text, p.general_chars)]
    scores = {}
    for corpus, docs in texts.items():
        scores[corpus] = perplexity.score_texts(model, tokenizer, docs, p.window, p.stride,
                                                   p.start_every_window).as_dict()
        log.info("  %s: token ppl %.3f, word ppl %.3f, byte ppl %.4f", corpus, scores[corpus]["token_ppl"],
                 scores[corpus]["word_ppl"], scores[corpus]["byte_ppl"])
    qa = _pubmedqa(model, tokenizer, q, q.variants, q.shots)
    headline = qa["lm-eval 0-shot"] if "lm-eval 0-shot" in qa else next(iter(qa.values()))
    general_text = "\n".join(general.values())  # whole texts: a stable reference
    term_docs = splits.train[: c.term_docs] if c.term_docs else splits.train
    terms = cloze.domain_terms(term_docs, general_text)
    items = cloze.cloze_items(splits.test, terms, c.items, c.candidates)
    blanks = cloze.cloze_accuracy(model, tokenizer, items, c.context_tokens)
    blanks["examples"] = [{"answer": i.answer, "candidates": i.candidates, "sentence_end": i.rest[:80]} for i in items[:5]]
    log.info("  cloze: %.3f on %d items (chance %.2f)", blanks["accuracy"], blanks["items"], blanks["chance"])
    comp = cfg.completions
    completions = [{"prompt": pr, "text": completion.complete(model, tokenizer, pr, comp.max_new_tokens,
                                                              comp.repetition_penalty)} for pr in comp.prompts]
    return results.ModelEvaluation(
        model=name, architecture=type(model).__name__, params=sum(x.numel() for x in model.parameters()),
        tokenizer=type(tokenizer).__name__, vocab_size=len(tokenizer), domain=p.domain,
        domain_ppl=scores[p.domain]["token_ppl"],
        general_ppl={k: v["token_ppl"] for k, v in scores.items() if k != p.domain},
        word_ppl={k: v["word_ppl"] for k, v in scores.items()}, byte_ppl={k: v["byte_ppl"] for k, v in scores.items()},
        bits_per_byte={k: v["bits_per_byte"] for k, v in scores.items()}, perplexity=scores,
        pubmedqa_acc=headline["accuracy"], pubmedqa=headline, pubmedqa_settings=qa,
        pubmedqa_calibrated_acc=qa.get("instructed 0-shot", {}).get("calibrated_accuracy"),
        cloze_acc=blanks["accuracy"], cloze=blanks, completions=completions, settings=to_dict(cfg),
        seconds=time.perf_counter() - started, threads=torch.get_num_threads())


def evaluate_task_model(name: str, cfg: FtEvalConfig, shots: list[int]) -> results.TaskEvaluation:
    """A task fine-tune scored on PubMedQA alone (lm-eval protocol, the given shot counts): the other measures
    of the harness belong to domain fine-tunes."""
    started = time.perf_counter()
    model, tokenizer = _load(name, cfg)
    qa = _pubmedqa(model, tokenizer, cfg.pubmedqa, ["lm-eval"], shots)
    return results.TaskEvaluation(model=name, pubmedqa_settings=qa, seconds=time.perf_counter() - started,
                                  settings=task_settings(cfg, shots))


def task_settings(cfg: FtEvalConfig, shots: list[int]) -> dict:
    """What a task model's PubMedQA scores record (and the study compares to decide they are done)."""
    return dict(to_dict(cfg.pubmedqa), shots=list(shots), device=cfg.run.device)


def _pubmedqa(model, tokenizer, q, variants: list[str], shot_counts: list[int]) -> dict[str, dict]:
    """Each variant and shot count on the first ``q.questions`` official test ids; few-shot examples come from
    the training questions only."""
    records = pubmedqa_records()
    test, pool = records["test"][: q.questions], records["train"]
    out = {}
    for variant in variants:
        for shots in (shot_counts if variant == "lm-eval" else [0]):
            name = f"{variant} {shots}-shot"
            out[name] = pubmedqa.evaluate(model, tokenizer, test, variant, shots, pool, q.max_prompt_tokens,
                                          q.shot_tokens, q.seed, q.resamples)
            r = out[name]
            log.info("  PubMedQA %s: accuracy %.3f [%.3f, %.3f], macro-F1 %.3f on %d test questions (majority %.3f; "
                     "answers %s)", name, r["accuracy"], *r["accuracy_ci95"], r["macro_f1"], r["questions"],
                     r["majority_baseline"], r["predicted"])
    return out


def run(models: list[str], cfg: FtEvalConfig, out: Path | None = None, names: list[str] | None = None,
        task: bool = False) -> dict[str, results.ModelEvaluation | results.TaskEvaluation]:
    """Each model's evaluation by name (``--name``, else a slug of the model); written to OUT/NAME.json.
    ``task``: PubMedQA alone, zero-shot (a task fine-tune, scored in the format it learned)."""
    names = names or [results.slug(m) for m in models]
    if len(names) != len(models):
        raise LmlabError(f"--name was given {len(names)} times for {len(models)} models: give one per model")
    evaluated = {}
    for model, name in zip(models, names):
        log.info("[ft-eval] %s", model)
        evaluated[name] = evaluate_task_model(model, cfg, [0]) if task else evaluate_model(model, cfg)
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            results.write(Path(out) / f"{name}.json", evaluated[name])
    return evaluated


"""lmlab ft-eval: one harness for a pretrained model and its fine-tunes (see lmlab.hf.evaluation).

The steps: model -> domain perplexity (held-out documents) -> general perplexity (WikiText-2 raw test,
Tiny Shakespeare) in token, word and byte units -> PubMedQA accuracy on the official test ids (with the
majority-class baseline) -> fill-in-the-blank accuracy -> greedy completions of fixed prompts. The result is
one JSON object per model; with two or more models, a before/after table.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lmlab import rundir
from lmlab.config import recipe_config
from lmlab.data.eval_texts import head, load_eval_text
from lmlab.errors import LmlabError
from lmlab.hf import evaluation, registry
from lmlab.hf.domain_data import load_domain, pubmedqa_records
from lmlab.report.tables import finetune_table

GENERAL_NAMES = {"wikitext2-raw": "wikitext2", "shakespeare": "shakespeare"}


def configure(preset: str, overrides: list[str] = ()) -> dict[str, Any]:
    return recipe_config("ft_eval", preset, overrides=overrides)


def _status(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # progress on stderr: stdout carries the table or the JSON


def evaluate_model(name: str, cfg: dict[str, Any], log=_status) -> dict[str, Any]:
    started = time.perf_counter()
    model, tokenizer = registry.load(name)
    model.eval()
    p, q, c = cfg["perplexity"], cfg["pubmedqa"], cfg["cloze"]
    splits = load_domain(p["domain"])
    texts = {p["domain"]: [d.text for d in splits.test[: p["domain_docs"]]]}
    general = {spec: load_eval_text(spec).text for spec in p["general"]}  # read once: scored in part, terms from all
    for spec, text in general.items():
        texts[GENERAL_NAMES.get(spec, spec)] = [head(text, p["general_chars"])]
    scores = {}
    for corpus, docs in texts.items():
        scores[corpus] = evaluation.score_texts(model, tokenizer, docs, p["window"], p["stride"]).as_dict()
        log(f"  {corpus}: token ppl {scores[corpus]['token_ppl']:.3f}, word ppl {scores[corpus]['word_ppl']:.3f}, "
            f"byte ppl {scores[corpus]['byte_ppl']:.4f}")
    records = pubmedqa_records()["test"][: q["questions"]]
    qa = evaluation.pubmedqa_accuracy(model, tokenizer, records, q["max_prompt_tokens"])
    log(f"  PubMedQA: {qa['accuracy']:.3f} (calibrated {qa['calibrated_accuracy']:.3f}) on {qa['questions']} test "
        f"questions (majority {qa['majority_baseline']:.3f})")
    general_text = "\n".join(general.values())  # whole texts: a stable reference
    term_docs = splits.train[: c["term_docs"]] if c["term_docs"] else splits.train
    terms = evaluation.domain_terms(term_docs, general_text)
    items = evaluation.cloze_items(splits.test, terms, c["items"], c["candidates"])
    cloze = evaluation.cloze_accuracy(model, tokenizer, items, c["context_tokens"])
    cloze["examples"] = [{"answer": i.answer, "candidates": i.candidates, "sentence_end": i.rest[:80]} for i in items[:5]]
    log(f"  cloze: {cloze['accuracy']:.3f} on {cloze['items']} items (chance {cloze['chance']:.2f})")
    comp = cfg["completions"]
    completions = [{"prompt": pr, "text": evaluation.complete(model, tokenizer, pr, comp["max_new_tokens"],
                                                              comp["repetition_penalty"])} for pr in comp["prompts"]]
    domain = p["domain"]
    return {
        "model": name, "architecture": type(model).__name__, "params": sum(x.numel() for x in model.parameters()),
        "tokenizer": type(tokenizer).__name__, "vocab_size": len(tokenizer),
        "domain": domain, "domain_ppl": scores[domain]["token_ppl"],
        "general_ppl": {k: v["token_ppl"] for k, v in scores.items() if k != domain},
        "word_ppl": {k: v["word_ppl"] for k, v in scores.items()},
        "byte_ppl": {k: v["byte_ppl"] for k, v in scores.items()},
        "bits_per_byte": {k: v["bits_per_byte"] for k, v in scores.items()},
        "perplexity": scores,
        "pubmedqa_acc": qa["accuracy"], "pubmedqa_calibrated_acc": qa["calibrated_accuracy"], "pubmedqa": qa,
        "cloze_acc": cloze["accuracy"], "cloze": cloze,
        "completions": completions,
        "settings": cfg, "seconds": time.perf_counter() - started, "threads": torch.get_num_threads(),
    }


def run(models: list[str], preset: str, overrides: list[str] = (), out: Path | None = None,
        names: list[str] | None = None, as_json: bool = False) -> list[dict[str, Any]]:
    cfg = configure(preset, overrides)
    names = names or [_slug(m) for m in models]
    if len(names) != len(models):
        raise LmlabError(f"--name was given {len(names)} times for {len(models)} models: give one per model")
    results = []
    for model, name in zip(models, names):
        _status(f"[ft-eval] {model}")
        result = evaluate_model(model, cfg)
        results.append(result)
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            rundir.write_json(Path(out) / f"{name}.json", result)
    if as_json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    elif len(results) > 1:
        table = finetune_table(dict(zip(names, results)))
        print(table)
        if out:
            (Path(out) / "comparison.md").write_text(table + "\n", encoding="utf-8")
    return results


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model.strip("/")).strip("_") or "model"

"""lmlab eval: perplexity of trained runs on any corpus, with OOV accounting and distribution-shift numbers.

Steps: load each run -> load and normalise each corpus to the training corpus's conventions -> encode with
the run's vocabulary -> per-token NLL with the run's own evaluation settings -> perplexity, perplexity over
in-vocabulary targets, frequency buckets, unigram KL/JS against the training split -> table / JSON.

OOV accounting: a target counts as unknown when it is scored as ``<unk>``: a word outside the vocabulary, or a
literal ``<unk>`` of the source (PTB, WikiText). ``oov_rate`` is their share of all targets; ``ppl`` scores
them like any word (a PTB model gives ``<unk>`` a high probability, which flatters ``ppl`` on foreign text);
``ppl_in_vocab`` is the perplexity over the other targets only, and is the number to compare across corpora.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import sys
from pathlib import Path

import torch

from lmlab.data.batching import lm_pairs
from lmlab.data.eval_texts import load_eval_text
from lmlab.data.normalize import normalize_text
from lmlab.data.vocab import EOS, UNK, read_words
from lmlab.data.word_corpus import split_files
from lmlab.errors import LmlabError
from lmlab.metrics.perplexity import perplexity
from lmlab.metrics.shift import frequency_buckets, js_divergence, kl_divergence, unigram
from lmlab.report.plots import plot_cross_domain
from lmlab.scoring import token_nlls
from lmlab.trained import TrainedModel, load_trained


def run(run_dirs: list[Path], specs: list[str], as_json: bool = False, compare: Path | None = None) -> list[dict]:
    texts = {spec: load_eval_text(spec) for spec in specs}  # fail on a bad spec before any model work
    words = {spec: [w for s in normalize_text(t.text, t.kind) for w in (*s, EOS)] for spec, t in texts.items()}
    results = []
    for run_dir in run_dirs:
        trained = load_trained(run_dir)
        train_ids = _training_ids(trained)
        for spec in specs:
            results.append(evaluate(trained, spec, texts[spec].kind, words[spec], train_ids))
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        print(results_table(results))
    if compare:
        write_comparison(results, Path(compare))
    return results


def evaluate(trained: TrainedModel, spec: str, kind: str, words: list[str], train_ids: torch.Tensor) -> dict:
    vocab = trained.vocab
    ids = vocab.encode(words)
    inputs, targets = lm_pairs(ids, vocab.eos_id)
    nlls = token_nlls(trained.model, trained.family, inputs, targets, **trained.score_settings())
    is_unk = targets == vocab.unk_id
    in_vocab = ~is_unk
    train_counts = torch.bincount(train_ids, minlength=len(vocab))
    p_new, p_train = unigram(ids, len(vocab)), unigram(train_ids, len(vocab))
    nll = float(nlls.sum())
    return {
        "run": str(trained.run_dir),
        "model": trained.name,
        "arch": trained.config["model"]["arch"],
        "corpus": spec,
        "tokens": targets.numel(),
        "nll": nll,
        "ppl": perplexity(nll, targets.numel()),
        "oov_rate": float(is_unk.double().mean()),
        "oov_words": sum(1 for w in words if w not in vocab),
        "source_unk": words.count(UNK),
        "in_vocab_tokens": int(in_vocab.sum()),
        "ppl_in_vocab": perplexity(float(nlls[in_vocab].sum()), int(in_vocab.sum())),
        "buckets": frequency_buckets(nlls, targets, train_counts, vocab.unk_id),
        "shift": {
            "kl_new_to_train": kl_divergence(p_new, p_train),
            "kl_train_to_new": kl_divergence(p_train, p_new),
            "js": js_divergence(p_new, p_train),
            "smoothing": "add-0.5 unigram counts over the training vocabulary; OOV words counted as <unk>",
        },
        "normalisation": f"{kind} -> PTB conventions (lmlab.data.normalize)",
        "unit": "word (one <eos> per sentence; OOV words scored as <unk>)",
        "evaluation": trained.final["evaluation"],
    }


def _training_ids(trained: TrainedModel) -> torch.Tensor:
    return trained.vocab.encode(_training_words(trained.config["data"]["corpus"]))


@functools.lru_cache(maxsize=4)
def _training_words(corpus: str) -> list[str]:
    """Runs trained on the same corpus share one read of its training split."""
    return read_words(split_files(corpus)["train"])


def results_table(results: list[dict]) -> str:
    """Models x corpora: perplexity, in-vocabulary perplexity and OOV rate."""
    lines = ["| model | corpus | tokens | OOV rate | ppl | ppl (in-vocab) | KL(new‖train) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['corpus']} | {r['tokens']:,} | {r['oov_rate']:.1%} | {r['ppl']:.1f} | "
                     f"{r['ppl_in_vocab']:.1f} | {r['shift']['kl_new_to_train']:.3f} |")
    return "\n".join(lines)


def write_comparison(results: list[dict], out: Path, in_domain: str = "ptb:test") -> dict:
    """cross_domain.{md,csv,png,json} in ``out``: ratios to the in-domain perplexity per model, and which
    model degrades least and most (geometric mean of the in-vocabulary perplexity ratio over new corpora)."""
    base = {r["model"]: r for r in results if r["corpus"] == in_domain}
    if not base:
        raise LmlabError(f"the comparison needs the in-domain corpus '{in_domain}' among the --corpus values")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        ref = base.get(r["model"])
        if ref is None:
            continue
        rows.append({"model": r["model"], "corpus": r["corpus"], "oov_rate": r["oov_rate"], "ppl": r["ppl"],
                     "ppl_in_vocab": r["ppl_in_vocab"], "ppl_ratio": r["ppl"] / ref["ppl"],
                     "ppl_in_vocab_ratio": r["ppl_in_vocab"] / ref["ppl_in_vocab"],
                     "kl_new_to_train": r["shift"]["kl_new_to_train"], "js": r["shift"]["js"]})
    degradation = {}
    for model in base:
        ratios = [row["ppl_in_vocab_ratio"] for row in rows if row["model"] == model and row["corpus"] != in_domain]
        if ratios:
            degradation[model] = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    summary = {"in_domain": in_domain, "mean_in_vocab_ratio": degradation}
    if degradation:
        summary["degrades_least"] = min(degradation, key=degradation.get)
        summary["degrades_most"] = max(degradation, key=degradation.get)
    with (out / "cross_domain.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md = ["| model | corpus | OOV rate | ppl | ppl ratio | ppl (in-vocab) | in-vocab ratio | KL(new‖train) | JS |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['model']} | {r['corpus']} | {r['oov_rate']:.1%} | {r['ppl']:.1f} | {r['ppl_ratio']:.2f} | "
           f"{r['ppl_in_vocab']:.1f} | {r['ppl_in_vocab_ratio']:.2f} | {r['kl_new_to_train']:.3f} | {r['js']:.3f} |"
           for r in rows]
    if degradation:
        md.append("")
        md.append(f"Geometric-mean in-vocabulary perplexity ratio (new / {in_domain}): "
                  + ", ".join(f"{m} {v:.2f}" for m, v in degradation.items())
                  + f". Degrades least: **{summary['degrades_least']}**; most: **{summary['degrades_most']}**.")
    md += ["", "Perplexity by how often the target word occurred in training (frequent >= 1000, medium 100-999, "
           "rare 1-99; share of targets in brackets):", "",
           "| model | corpus | frequent | medium | rare | <unk> |", "|---|---|---:|---:|---:|---:|"]
    md += [f"| {r['model']} | {r['corpus']} | " + " | ".join(
        f"{b['ppl']:.1f} ({b['share']:.0%})" for b in r["buckets"].values()) + " |"
        for r in results if r["model"] in base]
    (out / "cross_domain.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "cross_domain_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_cross_domain(rows, out / "cross_domain.png")
    # Status lines go to stderr so that `--json --compare` still prints pure JSON on stdout.
    print(f"comparison written to {out}/cross_domain.{{md,csv,png}}", file=sys.stderr)
    if degradation:
        print(f"degrades least: {summary['degrades_least']}, most: {summary['degrades_most']}", file=sys.stderr)
    return summary

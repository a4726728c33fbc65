"""lmlab eval: perplexity of trained runs on any corpus, with OOV accounting and distribution-shift numbers.

Steps: load each run -> load and normalise each corpus to the training corpus's conventions -> encode with
the run's vocabulary -> per-token NLL with the run's own evaluation settings -> perplexity, perplexity over
in-vocabulary targets, frequency buckets, unigram KL/JS against the training split. Returns one dict per
(run, corpus); the CLI prints them (lmlab.report.tables.eval_table or JSON), lmlab.report.comparison compares.

OOV accounting: a target counts as unknown when it is scored as ``<unk>``: a word outside the vocabulary, or a
literal ``<unk>`` of the source (PTB, WikiText). ``oov_rate`` is their share of all targets; ``ppl`` scores
them like any word (a PTB model gives ``<unk>`` a high probability, which flatters ``ppl`` on foreign text);
``ppl_in_vocab`` is the perplexity over the other targets only, and is the number to compare across corpora.
"""

from __future__ import annotations

import functools
import logging
import math
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
from lmlab.trained import TrainedModel, load_trained
from lmlab.training import rundir

log = logging.getLogger("lmlab")

def run(run_dirs: list[Path], specs: list[str], per_token: bool = False,
        previous: list[dict] = ()) -> list[dict] | tuple[list[dict], list[dict]]:
    """One result per (run, corpus); see :func:`evaluate` for the keys. With ``per_token``, also every target's
    record (:func:`token_rows`), whose NLLs sum to each result's ``nll``. ``previous``: results of an earlier call
    (the study passes its cross_domain.json), reused for each corpus a run was scored on in the same training
    (``made_from``: the digest of its final.json); a run with nothing left to score is not loaded."""
    reusable = {(r["made_from"], r["corpus"]): r for r in previous if r.get("made_from")}
    digests = [rundir.final_digest(d) for d in run_dirs]
    todo = {d: [s for s in specs if per_token or (digest, s) not in reusable] for d, digest in zip(run_dirs, digests)}
    needed = [s for s in specs if any(s in t for t in todo.values())]
    if previous:
        log.info("[eval] scoring %s", ", ".join(f"{Path(d).name} on {len(t)} corpora" for d, t in todo.items() if t)
                 or "nothing: every result holds")
    texts = {spec: load_eval_text(spec) for spec in needed}  # fail on a bad spec before any model work
    words = {spec: [w for s in normalize_text(t.text, t.kind) for w in (*s, EOS)] for spec, t in texts.items()}
    for spec, ws in words.items():
        if not any(w != EOS for w in ws):
            raise LmlabError(f"corpus '{spec}' holds no words to score: give a text with at least one word")
    results, tokens = [], []
    for run_dir, digest in zip(run_dirs, digests):
        trained = load_trained(run_dir) if todo[run_dir] else None
        train_ids = _training_ids(trained) if trained else None
        for spec in specs:
            if spec not in todo[run_dir]:
                results.append(reusable[(digest, spec)])
                continue
            results.append(evaluate(trained, spec, texts[spec].kind, words[spec], train_ids))
            if per_token:
                tokens += token_rows(trained, spec, words[spec])
    return (results, tokens) if per_token else results


def token_rows(trained: TrainedModel, spec: str, words: list[str], top: int = 5) -> list[dict]:
    """Every target of ``words`` (normalised, one ``<eos>`` per sentence) as the model scored it: the word, the
    vocabulary token it was scored as (``<unk>`` for an out-of-vocabulary word), its NLL in nats and bits, its
    probability and rank (1 = the model's first choice) and the model's ``top`` most likely tokens."""
    vocab = trained.vocab
    ids = vocab.encode(words)
    inputs, targets = lm_pairs(ids, vocab.eos_id)
    rec = trained.family.token_records(trained.model, inputs, targets, top, **trained.score_settings())
    rows = []
    for i, (word, target) in enumerate(zip(words, targets.tolist())):
        nll = float(rec["nll"][i])
        rows.append({"model": trained.name, "corpus": spec, "index": i, "word": word, "token": vocab.itos[target],
                     "oov": target == vocab.unk_id and word != UNK, "nll": nll, "bits": nll / math.log(2),
                     "prob": math.exp(-nll), "rank": int(rec["rank"][i]),
                     "top": [{"token": vocab.itos[int(t)], "prob": math.exp(float(lp))}
                             for t, lp in zip(rec["top_ids"][i], rec["top_logp"][i])]})
    return rows


def evaluate(trained: TrainedModel, spec: str, kind: str, words: list[str], train_ids: torch.Tensor) -> dict:
    vocab = trained.vocab
    ids = vocab.encode(words)
    inputs, targets = lm_pairs(ids, vocab.eos_id)
    nlls = trained.token_nlls(inputs, targets)
    is_unk = targets == vocab.unk_id
    in_vocab = ~is_unk
    train_counts = torch.bincount(train_ids, minlength=len(vocab))
    p_new, p_train = unigram(ids, len(vocab)), unigram(train_ids, len(vocab))
    nll = float(nlls.sum())
    return {
        "run": str(trained.run_dir),
        "model": trained.name,
        "made_from": trained.made_from,
        "arch": trained.config.model.arch,
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
        "evaluation": trained.final.evaluation,
    }


def _training_ids(trained: TrainedModel) -> torch.Tensor:
    return trained.vocab.encode(_training_words(trained.config.data.corpus))


@functools.lru_cache(maxsize=4)
def _training_words(corpus: str) -> list[str]:
    """Runs trained on the same corpus share one read of its training split."""
    return read_words(split_files(corpus)["train"])

"""lmlab sample: the same prompts to every model, side by side, with measured text statistics.

Steps: load runs -> normalise each prompt to the training conventions (unknown words become <unk>, with a
warning naming them) -> generate for each (model, prompt, strategy, seed) -> statistics of each continuation
(distinct-n, repetition, <unk> rate, sentence length) and its fluency: the perplexity of the continuation
under a judge model that did not generate it -> every sample and a summary per model and strategy (the CLI
prints them side by side, or as JSON).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from lmlab.data.batching import lm_pairs
from lmlab.data.normalize import split_sentences, tokenize
from lmlab.data.vocab import EOS
from lmlab.errors import LmlabError
from lmlab.families import PRETRAINED
from lmlab.generation import SamplingSettings, generate
from lmlab.metrics.perplexity import perplexity
from lmlab.metrics.text_stats import text_statistics
from lmlab.trained import TrainedModel, is_run, load_trained
from lmlab.training import rundir

log = logging.getLogger("lmlab")

STAT_KEYS = ("distinct_1", "distinct_2", "distinct_3", "repeated_4gram_rate", "longest_repeated_span", "unk_rate",
             "mean_sentence_length", "fluency_ppl")


def run(run_dirs: list[Path], prompts: list[str], settings: list[SamplingSettings], seed: int = 0,
        samples: int = 1, judge: Path | None = None, out: Path | None = None, ban_unk: bool = False) -> dict:
    """Every sample with its statistics (``samples``) and their means per model and strategy (``summary``).
    ``ban_unk``: word-level models never emit ``<unk>`` (their greedy text otherwise loops on it)."""
    if samples < 1:
        raise LmlabError(f"--samples {samples} is not allowed: give at least 1")
    # Decide locally what each name is before loading anything (a run directory, or a pretrained model).
    pretrained_specs = [d for d in run_dirs if is_pretrained(d)]
    # Generation always uses the scratch implementation: same weights, and it has the key/value cache.
    models = [load_trained(d, impl="scratch") for d in run_dirs if d not in pretrained_specs]
    pretrained = [load_pretrained(str(d)) for d in pretrained_specs]
    judges = fluency_judges(models, load_trained(judge) if judge else None)
    rows = []
    for prompt in prompts:
        for name, model, tokenizer in pretrained:
            rows += pretrained_rows(name, model, tokenizer, prompt, settings, seed, samples)
        for model in models:
            rows += word_rows(model, prompt, settings, seed, samples, ban_unk, judges.get(model.name))
    result = {"samples": rows, "summary": summarise(rows)}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        rundir.write_json(Path(out), result)
    return result


def word_rows(model: TrainedModel, prompt: str, settings: list[SamplingSettings], seed: int, samples: int,
              ban_unk: bool, judge: TrainedModel | None) -> list[dict]:
    """A word-level model's samples of one prompt, with their statistics and fluency under ``judge``."""
    prompt_words = prompt_tokens(prompt, model)
    prompt_ids = model.vocab.encode([EOS, *prompt_words]).tolist()
    rows = []
    for s in settings:
        for sd in _seeds(s, seed, samples):
            ids = generate(model.model, model.family, prompt_ids, s, seed=sd,
                           banned=[model.vocab.unk_id] if ban_unk else [])
            words = model.vocab.decode(ids)
            row = {"model": model.name, "prompt": prompt, "strategy": s.label, "seed": sd,
                   "settings": asdict(s), "text": " ".join(words), "stats": text_statistics(words)}
            row["stats"]["fluency_ppl"], row["judge"] = _fluency(judge, prompt_words, words)
            rows.append(row)
    return rows


def _seeds(s: SamplingSettings, seed: int, samples: int) -> list[int]:
    """Greedy decoding is deterministic: one seed; a stochastic strategy gets ``samples`` of them."""
    return [seed] if s.strategy == "greedy" else [seed + k for k in range(samples)]


def is_pretrained(spec) -> bool:
    """A finished PTB run has final.json and vocab.txt; a pretrained model is a packaged name, a .gguf file, a
    save_pretrained directory, or a hub id (``owner/name``). Anything else is a run directory that is missing
    or unfinished, reported at once by load_trained rather than looked up on the hub."""
    from lmlab.pretrained.registry import PACKAGED

    path = Path(spec)
    if is_run(path):
        return False
    if str(spec) in PACKAGED or path.suffix == ".gguf":
        return True
    if path.is_dir():
        looks_like_run = (path / rundir.VOCAB).is_file() or (path / rundir.METRICS).is_file()
        return (path / "config.json").is_file() and not looks_like_run
    return not path.exists() and str(spec).count("/") == 1 and not str(spec).startswith((".", "/", "~"))


def load_pretrained(spec: str):
    from lmlab.pretrained import registry

    model, tokenizer = registry.load(spec)
    return Path(spec).name if Path(spec).exists() else spec, model.eval(), tokenizer


def pretrained_rows(name, model, tokenizer, prompt, settings, seed, samples) -> list[dict]:
    """Same sampling code as the word-level models; statistics on the continuation split into words and
    sentences by PTB's conventions, so the numbers compare with theirs (no fluency judge: another tokenizer)."""
    from lmlab.pretrained.domain_data import encode, start_ids

    rows = []
    prompt_ids = start_ids(tokenizer) + encode(tokenizer, prompt)
    for s in settings:
        for sd in _seeds(s, seed, samples):
            text = tokenizer.decode(generate(model, PRETRAINED, prompt_ids, s, seed=sd), skip_special_tokens=True)
            words = [w for sentence in split_sentences(text) for w in [*tokenize(sentence), EOS]]
            rows.append({"model": name, "prompt": prompt, "strategy": s.label, "seed": sd, "settings": asdict(s),
                         "text": " ".join(text.split()), "stats": dict(text_statistics(words), fluency_ppl=None),
                         "judge": None})
    return rows


def prompt_tokens(prompt: str, model: TrainedModel) -> list[str]:
    words = tokenize(prompt)
    unknown = sorted({w for w in words if w not in model.vocab})
    if unknown:
        log.warning("lmlab: warning: %s: prompt words outside the vocabulary become <unk>: %s", model.name,
                    ", ".join(unknown))
    return words


def fluency_judges(models: list[TrainedModel], judge: TrainedModel | None) -> dict[str, TrainedModel]:
    """Each generator's judge: the given one, else the other model with the lowest validation perplexity."""
    if judge:
        return {m.name: judge for m in models if m.run_dir != judge.run_dir}
    out = {}
    for m in models:
        others = [o for o in models if o is not m]
        if others:
            out[m.name] = min(others, key=lambda o: o.final.valid_ppl)
    return out


def _fluency(judge: TrainedModel | None, prompt_words: list[str], words: list[str]):
    if judge is None or not words:
        return None, None
    ids = judge.vocab.encode([*prompt_words, *words])
    nlls = judge.token_nlls(*lm_pairs(ids, judge.vocab.eos_id))
    return perplexity(float(nlls[-len(words):].sum()), len(words)), judge.name


def summarise(rows: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["strategy"])].append(r)
    summary = []
    for (model, strategy), group in groups.items():
        entry = {"model": model, "strategy": strategy, "samples": len(group)}
        for key in STAT_KEYS:
            values = [g["stats"][key] for g in group if g["stats"][key] is not None]
            entry[key] = sum(values) / len(values) if values else None
        summary.append(entry)
    return summary

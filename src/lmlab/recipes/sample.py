"""lmlab sample: the same prompts to every model, side by side, with measured text statistics.

Steps: load runs -> normalise each prompt to the training conventions (unknown words become <unk>, with a
warning naming them) -> generate for each (model, prompt, strategy, seed) -> statistics of each continuation
(distinct-n, repetition, <unk> rate, sentence length) and its fluency: the perplexity of the continuation
under a judge model that did not generate it -> every sample and a summary per model and strategy (the CLI
prints them side by side, or as JSON).
"""

from __future__ import annotations

import json
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
from lmlab.metrics.bootstrap import bootstrap_mean_ci
from lmlab.metrics.perplexity import perplexity
from lmlab.metrics.text_stats import text_statistics
from lmlab.trained import TrainedModel, finished_run, is_run, load_trained
from lmlab.training import rundir

log = logging.getLogger("lmlab")

STAT_KEYS = ("distinct_1", "distinct_2", "distinct_3", "repeated_4gram_rate", "longest_repeated_span", "unk_rate",
             "mean_sentence_length", "fluency_ppl")


def run(run_dirs: list[Path], prompts: list[str], settings: list[SamplingSettings], seed: int = 0,
        samples: int = 1, judge: Path | None = None, out: Path | None = None, ban_unk: bool = False,
        previous: list[dict] = ()) -> dict:
    """Every sample with its statistics (``samples``) and their means per model and strategy (``summary``).
    ``ban_unk``: word-level models never emit ``<unk>`` (their greedy text otherwise loops on it).

    ``previous``: the samples of an earlier call, reused where they still hold (the study passes its
    samples.json). A word-level model samples again unless ``previous`` has every sample asked for, made from its
    current training (``made_from``: the digest of its final.json); a reused sample is judged again when its judge,
    or the judge's training, changed. Only the models that sample or judge are loaded, so the checkpoint of a model
    whose samples are reused need not be present."""
    if samples < 1:
        raise LmlabError(f"--samples {samples} is not allowed: give at least 1")
    # Decide locally what each name is before loading anything (a run directory, or a pretrained model).
    pretrained_specs = [d for d in run_dirs if is_pretrained(d)]
    runs = {Path(d).name: Path(d) for d in run_dirs if d not in pretrained_specs}
    if len(runs) < len(run_dirs) - len(pretrained_specs):
        raise LmlabError("two runs share a directory name, which labels their samples: give runs whose last path "
                         "parts differ")
    finals = {name: finished_run(d) for name, d in runs.items()}  # fails at once on a missing or unfinished run
    digests = {name: rundir.final_digest(d) for name, d in runs.items()}
    judges = ({name: Path(judge) for name, d in runs.items() if d.resolve() != Path(judge).resolve()} if judge else
              {name: runs[other] for name, other in best_other({n: f.valid_ppl for n, f in finals.items()}).items()})
    judged_by = {name: (judges[name].name, rundir.final_digest(judges[name])) if name in judges else (None, None)
                 for name in runs}
    wanted = [(p, s, sd) for p in prompts for s in settings for sd in _seeds(s, seed, samples)]
    kept = _reusable(previous, digests, wanted, ban_unk)
    resample = [name for name, rows in kept.items() if None in rows]
    rejudge = [name for name, rows in kept.items() if name in resample or any(
        (r.get("judge"), r.get("judge_made_from")) != judged_by[name] for r in rows)]
    # Generation always uses the scratch implementation: same weights, and it has the key/value cache.
    loaded = {d: load_trained(d, impl="scratch")
              for d in {*(runs[n] for n in resample), *(judges[n] for n in rejudge if n in judges)}}
    pretrained = [load_pretrained(str(d)) for d in pretrained_specs]
    if previous:
        log.info("[sample] sampling %s; judging again %s", ", ".join(resample) or "none",
                 ", ".join(n for n in rejudge if n not in resample) or "none")
    rows = []
    for prompt in prompts:
        for name, model, tokenizer in pretrained:
            rows += pretrained_rows(name, model, tokenizer, prompt, settings, seed, samples)
        for name, d in runs.items():
            judge_model = loaded[judges[name]] if name in judges and name in rejudge else None
            if name in resample:
                rows += word_rows(loaded[d], prompt, settings, seed, samples, ban_unk, judge_model)
                continue
            for row in (dict(r, stats=dict(r["stats"])) for r, (p, _, _) in zip(kept[name], wanted) if p == prompt):
                if name in rejudge:
                    _judge(row, judge_model, tokenize(prompt), row["text"].split())
                rows.append(row)
    result = {"samples": rows, "summary": summarise(rows)}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        rundir.write_json(Path(out), result)
    return result


def _reusable(previous: list[dict], digests: dict[str, str | None], wanted: list[tuple], ban_unk: bool):
    """For each model, the sample of ``previous`` for each wanted (prompt, settings, seed), or None where there is
    none made from the model's current training with those settings."""
    def key(model, prompt, settings: dict, seed, banned) -> tuple:
        return model, prompt, json.dumps(settings, sort_keys=True), seed, banned

    found = {key(r["model"], r["prompt"], r["settings"], r["seed"], r.get("ban_unk", False)): r for r in previous
             if r.get("made_from") is not None and r.get("made_from") == digests.get(r["model"])}
    return {name: [found.get(key(name, p, asdict(s), sd, ban_unk)) for p, s, sd in wanted] for name in digests}


def word_rows(model: TrainedModel, prompt: str, settings: list[SamplingSettings], seed: int, samples: int,
              ban_unk: bool, judge: TrainedModel | None) -> list[dict]:
    """A word-level model's samples of one prompt, with their statistics and fluency under ``judge``; each
    records the training it was made from (``made_from``: the digest of the run's final.json)."""
    prompt_words = prompt_tokens(prompt, model)
    prompt_ids = model.vocab.encode([EOS, *prompt_words]).tolist()
    rows = []
    for s in settings:
        for sd in _seeds(s, seed, samples):
            ids = generate(model.model, model.family, prompt_ids, s, seed=sd,
                           banned=[model.vocab.unk_id] if ban_unk else [])
            words = model.vocab.decode(ids)
            row = {"model": model.name, "made_from": model.made_from, "prompt": prompt, "strategy": s.label, "seed": sd,
                   "settings": asdict(s), "ban_unk": ban_unk, "text": " ".join(words),
                   "stats": text_statistics(words)}
            _judge(row, judge, prompt_words, words)
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


def fluency_judges(models: list[TrainedModel]) -> dict[str, TrainedModel]:
    """Each loaded model's judge: the other model with the lowest validation perplexity (as ``run`` chooses)."""
    by_name = {m.name: m for m in models}
    return {name: by_name[other] for name, other in best_other({m.name: m.final.valid_ppl for m in models}).items()}


def best_other(valid_ppl: dict[str, float]) -> dict[str, str]:
    """Each model's judge by name: the other model with the lowest validation perplexity (none for a lone model)."""
    return {name: min((o for o in valid_ppl if o != name), key=valid_ppl.__getitem__)
            for name in valid_ppl if len(valid_ppl) > 1}


def _judge(row: dict, judge: TrainedModel | None, prompt_words: list[str], words: list[str]) -> None:
    """The row's fluency: the perplexity of its continuation under ``judge``, which the row names with its training."""
    row["stats"]["fluency_ppl"], row["judge"] = _fluency(judge, prompt_words, words)
    row["judge_made_from"] = judge.made_from if judge else None


def _fluency(judge: TrainedModel | None, prompt_words: list[str], words: list[str]):
    if judge is None or not words:
        return None, None
    ids = judge.vocab.encode([*prompt_words, *words])
    nlls = judge.token_nlls(*lm_pairs(ids, judge.vocab.eos_id))
    return perplexity(float(nlls[-len(words):].sum()), len(words)), judge.name


def summarise(rows: list[dict]) -> list[dict]:
    """Per (model, strategy): the mean of each statistic, and a 95% bootstrap interval of the mean fluency
    (samples resampled; none for a single sample, e.g. greedy decoding of one prompt)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["strategy"])].append(r)
    summary = []
    for (model, strategy), group in groups.items():
        entry = {"model": model, "strategy": strategy, "samples": len(group)}
        for key in STAT_KEYS:
            values = [g["stats"][key] for g in group if g["stats"][key] is not None]
            entry[key] = sum(values) / len(values) if values else None
        # Fluency is what the models are ranked by, on a dozen samples at most: give the mean its interval (a
        # list, as samples.json holds it, so a summary made again compares equal to the one read back).
        fluency = [g["stats"]["fluency_ppl"] for g in group if g["stats"]["fluency_ppl"] is not None]
        entry["fluency_ppl_ci95"] = list(bootstrap_mean_ci(fluency)) if len(fluency) > 1 else None
        summary.append(entry)
    return summary

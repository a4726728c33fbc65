"""One results contract: what each result file holds, and where a study keeps it.

Writers (recipes) build these dataclasses and :func:`write` them; readers (the study, the report, ``eval`` and
``sample``) :func:`read` them back, so a key is named once. Files written before a field existed read with that
field's default (``None``); keys this version does not know are kept in ``extra`` rather than dropped.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lmlab.training import rundir

T = TypeVar("T")


def write(path: Path, result) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    rundir.write_json(path, as_dict(result))


def read(path: Path, cls: type[T]) -> T:
    return from_dict(rundir.read_json(path), cls)


def read_if_present(path: Path, cls: type[T]) -> T | None:
    return read(path, cls) if Path(path).is_file() else None


def from_dict(data: dict[str, Any], cls: type[T]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return cls(**known, **({"extra": extra} if "extra" in names else {}))


def as_dict(result) -> dict[str, Any]:
    """The result as written to its file: its fields, with keys kept in ``extra`` back at the top level."""
    data = dataclasses.asdict(result)
    data.update(data.pop("extra", None) or {})
    return data


@dataclass
class TrainFinal:
    """final.json of ``lmlab train``: the best-validation checkpoint's numbers (word-level perplexity)."""

    model: str
    status: str                      # finished, early_stopped or diverged
    epochs: int
    best_epoch: int
    valid_loss: float
    valid_ppl: float
    test_loss: float
    test_ppl: float
    tokens: dict[str, int]           # scored targets per split
    oov_words: dict[str, int]
    vocab_size: int
    parameters: dict[str, int]       # total, non_embedding
    train_valid_seconds: float
    evaluation: str                  # how each split was scored (the family's note)
    unit: str
    config: dict[str, Any]
    best_weights: str | None = None  # with optim.average_from: "raw" or "averaged", whichever validated lower
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneFinal:
    """final.json of ``lmlab finetune``."""

    config: dict[str, Any]
    model: str
    mode: str                        # full or lora
    params_total: int
    params_trainable: int
    train_docs: int
    train_chunks: int
    train_tokens_available: int
    tokens_trained: int
    epochs: float
    steps: int
    stopped_early: bool
    train_seconds: float
    train_tokens_per_s: float
    best_step: int
    best_valid_loss: float
    best_valid_ppl: float
    initial_valid_ppl: float
    initial_general_ppl: float | None
    model_dir: str
    device: str
    processes: int
    threads: int
    best_general_ppl: float | None = None
    task: str = "lm"                 # lm, or pubmedqa (task fine-tuning, checkpoint chosen on valid accuracy)
    initial_valid_acc: float | None = None
    best_valid_acc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelEvaluation:
    """NAME.json of ``lmlab ft-eval`` (a study's finetune/base.json and each mode's before/after.json)."""

    model: str
    architecture: str
    params: int
    tokenizer: str
    vocab_size: int
    domain: str
    domain_ppl: float                # BPE-token perplexity on the held-out domain documents
    general_ppl: dict[str, float]    # token perplexity per general text
    word_ppl: dict[str, float]
    byte_ppl: dict[str, float]
    bits_per_byte: dict[str, float]
    perplexity: dict[str, dict]      # every unit per corpus (lmlab.pretrained.perplexity.TextScore)
    pubmedqa_acc: float              # the headline: lm-eval protocol, zero-shot
    pubmedqa: dict[str, Any]         # its full report (CIs, macro-F1, verdicts, confusion, majority baseline)
    cloze_acc: float
    cloze: dict[str, Any]
    completions: list[dict[str, str]]
    settings: dict[str, Any]         # the ft-eval config that produced it
    seconds: float
    threads: int
    pubmedqa_calibrated_acc: float | None = None
    pubmedqa_settings: dict[str, dict] | None = None  # every variant x shots, by name ("lm-eval 3-shot", …)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskEvaluation:
    """pubmedqa.json of a task fine-tune: PubMedQA (lm-eval protocol) on the official test ids."""

    model: str
    pubmedqa_settings: dict[str, dict]  # by setting ("lm-eval 0-shot", …): accuracy, macro-F1, CIs, verdicts, …
    settings: dict[str, Any]            # the ft-eval pubmedqa config and shots that produced it
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreferenceMeasurement:
    """before.json / after.json of ``lmlab dpo``: the policy on the held-out pairs and the side measures."""

    pairs: int
    preference_acc: float
    preference_acc_normalized: float
    logp_margin: float
    reward_acc: float
    reward_margin: float
    logp_chosen: float
    logp_rejected: float
    kl_from_reference: float
    pubmedqa_acc: float
    pubmedqa: dict[str, Any]
    general_ppl: dict[str, float]
    general_word_ppl: dict[str, float]
    generations: list[dict[str, Any]]  # prompt, reply and the reply's text statistics
    model: str
    ci95: dict[str, Any] | None = None      # 95% bootstrap interval of each pair score's mean
    reward_ties: int | None = None         # pairs whose implicit reward is exactly 0 (counted as 0.5)
    change_vs_before: dict[str, Any] | None = None  # after.json: paired change and its 95% interval
    kl_on_samples: dict[str, Any] | None = None  # after.json: KL(policy || reference) on the policy's own samples
    train_seconds: float | None = None   # after.json only
    steps: int | None = None
    train_pairs: int | None = None
    model_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class StudyLayout:
    """Every path of a study directory, in one place::

        ptb/<arch>/                   training runs (TrainFinal), one per study train.models
        ptb_table.md                  the perplexity table
        scaling/<B>min/<arch>-w<W>/   the scaling study's runs (budget B, width W); scaling/scaling.{json,md,png}
        cross_domain/                 cross_domain.json (one object per run x corpus), .md, .csv, .png, summary
        samples.json                  every sample with its statistics, and the summary per model and strategy
        finetune/<model>/base.json    ft-eval of a pretrained model (ModelEvaluation), shared by its fine-tunes
        finetune/<model>/<mode>/      domain fine-tunes (FinetuneFinal) with before.json / after.json
        finetune/<model>/task-<start>-<mode>/   PubMedQA task fine-tunes with pubmedqa.json (setting -> scores)
        finetune/sizes/docsN/         the data-size experiment (the first model)
        finetune/qa.json              PubMedQA per model x starting point x setting
        dpo/<source>/                 DPO runs with before.json / after.json (PreferenceMeasurement)
        rl/                           the GRPO run with before.json / after.json (TaskEvaluation)
        report.md, report.html        the report; study.log the log of every run of the study
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def ptb_run(self, arch: str) -> Path:
        return self.root / "ptb" / arch

    @property
    def scaling(self) -> Path:
        return self.root / "scaling"

    @property
    def rl_run(self) -> Path:
        return self.root / "rl"

    def scaling_run(self, budget: float, arch: str, width: int) -> Path:
        return self.scaling / f"{budget:g}min" / f"{arch}-w{width}"

    @property
    def ptb_table(self) -> Path:
        return self.root / "ptb_table.md"

    @property
    def cross_domain(self) -> Path:
        return self.root / "cross_domain"

    @property
    def samples(self) -> Path:
        return self.root / "samples.json"

    @property
    def finetune(self) -> Path:
        return self.root / "finetune"

    def model_dir(self, model: str) -> Path:
        """A pretrained model's folder: its name, or a slug of its path."""
        return self.finetune / slug(model)

    def finetune_run(self, model: str, mode: str) -> Path:
        return self.model_dir(model) / mode

    def task_run(self, model: str, start: str, mode: str) -> Path:
        return self.model_dir(model) / f"task-{start}-{mode}"

    def size_run(self, docs: int) -> Path:
        return self.finetune / "sizes" / f"docs{docs}"

    @property
    def sizes(self) -> Path:
        return self.finetune / "sizes"

    def base_evaluation(self, model: str) -> Path:
        return self.model_dir(model) / "base.json"

    @property
    def qa(self) -> Path:
        return self.finetune / "qa.json"

    def dpo_run(self, source: str) -> Path:
        return self.root / "dpo" / source.replace(":", "_").replace("/", "_")

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def log(self) -> Path:
        return self.root / "study.log"


def slug(model: str) -> str:
    """A file name for a model name or path."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model.strip("/")).strip("_") or "model"


BEFORE, AFTER = "before.json", "after.json"
MODEL_DIR = "model"      # a fine-tune's or DPO run's best weights, a plain from_pretrained directory
ADAPTER_DIR = "adapter"  # LoRA only: the peft adapter
TASK_SCORES = "pubmedqa.json"  # a task fine-tune's PubMedQA scores by setting ("lm-eval 0-shot": report)
MADE_FROM = "made_from.json"  # a run started from a model the study trained: which training of it (digest)

"""One typed dataclass per recipe: what each config key is, what values it may take, and which keys only say
where and how long a run runs (``runtime``: a run may resume or be reused across them).

Values live in the TOML presets (``configs/<recipe>/<preset>.toml``; ``cpu`` is the base of each recipe and
documents every key, ``smoke``/``gpu`` inherit it and hold only what differs). The loader checks every value
against these fields (type, range, choices) before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


def key(*, min: float | None = None, max: float | None = None, below: float | None = None,
        choices: tuple | None = None, runtime: bool = False, item_choices: tuple | None = None):
    """A config field: ``min``/``max`` inclusive, ``below`` exclusive, ``choices`` for strings, ``item_choices``
    for every element of a list; ``runtime`` marks a key that does not change what a run computes."""
    meta = {k: v for k, v in dict(min=min, max=max, below=below, choices=choices, runtime=runtime,
                                   item_choices=item_choices).items() if v is not None and v is not False}
    return field(metadata=meta)


def device():  # "auto", "cpu", "cuda", "cuda:N" (checked when the run starts)
    return key(runtime=True)


def threads():  # torch threads (0 = torch's default)
    return key(min=0, runtime=True)


def probability():
    return key(min=0.0, below=1.0)


# --- lmlab train: word-level models on a corpus ---------------------------------------------------------------

@dataclass
class WordData:
    corpus: str
    batch_size: int = key(min=1)
    bptt: int = key(min=1)                 # recurrent families: steps of truncated BPTT
    variable_bptt: bool                    # recurrent families: AWD-LSTM's window lengths around bptt
    eval_batch_size: int = key(min=1)
    eval_stride: int = key(min=0)          # transformer: sliding-window stride (0 = half the context)
    max_train_tokens: int = key(min=0)
    max_eval_tokens: int = key(min=0)


@dataclass
class RecurrentModel:
    ARCHES: ClassVar[tuple[str, ...]] = ("rnn", "gru", "lstm")
    arch: str = key(choices=ARCHES)
    impl: str = key(choices=("scratch", "nn"))
    emb_size: int = key(min=1)
    hidden_size: int = key(min=1)
    num_layers: int = key(min=1)
    dropout_emb: float = probability()
    dropout_layer: float = probability()
    dropout_out: float = probability()
    tie_weights: bool
    init_range: float = key(min=0.0)
    weight_drop: float = probability()     # DropConnect on hidden-to-hidden weights (both impls)
    dropout_words: float = probability()   # embedding dropout: whole word types dropped, one mask per window
    layer_norm: bool                       # rnn, scratch: layer-normalised Elman cell (Ba et al. 2016)
    compiled_cell: bool                    # lstm, scratch, CPU: the cell's per-step element-wise work in compiled C++
    activation_reg: float = key(min=0.0)   # AR: alpha * mean(h^2) of the last layer's output
    temporal_reg: float = key(min=0.0)     # TAR: beta * mean((h_t - h_{t-1})^2)
    output_cutoffs: list[int]              # [] full softmax; [c0, ...] clustered (adaptive) softmax over frequency


@dataclass
class TransformerModel:
    ARCHES: ClassVar[tuple[str, ...]] = ("transformer",)
    arch: str = key(choices=ARCHES)
    impl: str = key(choices=("scratch", "nn"))
    d_model: int = key(min=1)
    n_layers: int = key(min=1)
    n_heads: int = key(min=1)
    d_ff: int = key(min=1)
    context_length: int = key(min=2)
    dropout: float = probability()
    dropout_emb: float = probability()
    tie_weights: bool
    init_std: float = key(min=0.0)
    attn_impl: str = key(choices=("matmul", "sdpa"))
    output_cutoffs: list[int]              # [] full softmax; [c0, ...] clustered (adaptive) softmax over frequency


@dataclass
class WordOptim:
    name: str = key(choices=("sgd", "adamw"))
    lr: float = key(min=0.0)
    momentum: float = probability()
    betas: list[float]
    weight_decay: float = key(min=0.0)
    schedule: str = key(choices=("constant", "cosine", "linear", "plateau"))
    warmup_steps: int = key(min=0)
    min_lr_ratio: float = key(min=0.0, max=1.0)
    anneal_factor: float = key(min=1.0)    # schedule = "plateau": lr divided by this after a worse epoch
    clip: float = key(min=0.0)             # gradient-norm clipping (0 = off)
    average_from: float = key(min=0.0, max=1.0)  # > 0: also keep the weights' mean from this share of the steps
    average_decay: float = key(min=0.0, below=1.0)  # 0: that mean is uniform; d > 0: an EMA, decay d per step


@dataclass
class WordTrain:
    epochs: int = key(min=1, runtime=True)
    budget_minutes: float = key(min=0.0, runtime=True)  # > 0: plan the run to fit this wall time (-> steps)
    steps: int = key(min=0)                # > 0: exactly this many optimiser steps (a budget's plan replays)
    replan: bool = key(runtime=True)       # budget: re-count the steps that fit after every validation
    plan: list[list[int]]                  # [[0, N0], [step, new total], ...]: a budget's plan and re-plans
    patience: int = key(min=0, runtime=True)
    seed: int
    device: str = device()
    threads: int = threads()
    compile: bool
    amp: bool


@dataclass
class Log:
    tensorboard: bool


@dataclass
class TrainConfig:
    data: WordData
    model: RecurrentModel | TransformerModel
    optim: WordOptim
    train: WordTrain
    log: Log
    preset: str


# --- lmlab finetune -------------------------------------------------------------------------------------------

@dataclass
class ModelName:
    name: str


@dataclass
class DomainData:
    task: str = key(choices=("lm", "pubmedqa"))  # language modelling on `dataset`, or PubMedQA verdicts
    long_answer: bool                      # pubmedqa task: the expert's long answer is a target too
    dataset: str
    seq_len: int = key(min=2)
    train_docs: int = key(min=0)
    train_tokens: int = key(min=0)
    valid_chunks: int = key(min=1)
    seed: int


@dataclass
class FinetuneTrain:
    steps: int = key(min=1, runtime=True)
    batch_size: int = key(min=1)
    grad_accum: int = key(min=1)
    eval_every: int = key(min=1)
    patience: int = key(min=0, runtime=True)
    general_corpus: str                     # "" = no general text
    general_chunks: int = key(min=0)
    seed: int
    device: str = device()
    threads: int = threads()
    mixed_precision: str = key(choices=("no", "bf16", "fp16"))


@dataclass
class FinetuneOptim:
    lr: float = key(min=0.0)
    weight_decay: float = key(min=0.0)
    warmup_steps: int = key(min=0)
    min_lr_ratio: float = key(min=0.0, max=1.0)
    grad_clip: float = key(min=0.0)


@dataclass
class Lora:
    enabled: bool
    lr: float = key(min=0.0)
    r: int = key(min=1)
    alpha: float = key(min=0.0)
    dropout: float = probability()
    target_modules: list[str]


@dataclass
class FinetuneConfig:
    model: ModelName
    data: DomainData
    train: FinetuneTrain
    optim: FinetuneOptim
    lora: Lora
    log: Log
    preset: str


# --- lmlab ft-eval --------------------------------------------------------------------------------------------

@dataclass
class PerplexityEval:
    domain: str
    domain_docs: int = key(min=0)          # held-out documents scored (0 = the whole test split)
    general: list[str]
    general_chars: int = key(min=0)
    window: int = key(min=2)
    stride: int = key(min=1)
    start_every_window: bool               # BOS before every window, not only the first, for models with one


@dataclass
class PubmedqaEval:
    questions: int = key(min=1)            # the first N official test ids in file order (500 = all)
    max_prompt_tokens: int = key(min=8)    # the question's prompt; its abstract is cut from the start to fit
    shots: list[int]                       # lm-eval variant: 0 = zero-shot, k = k training examples
    shot_tokens: int = key(min=8)          # each example's prompt, cut the same way
    variants: list[str] = key(item_choices=("lm-eval", "instructed"))
    seed: int                              # few-shot draws and bootstrap resamples
    resamples: int = key(min=100)          # bootstrap resamples for the 95% intervals


@dataclass
class ClozeEval:
    items: int = key(min=1)
    candidates: int = key(min=2)
    context_tokens: int = key(min=1)
    term_docs: int = key(min=0)


@dataclass
class CompletionsEval:
    prompts: list[str]
    max_new_tokens: int = key(min=1)
    repetition_penalty: float = key(min=0.0)


@dataclass
class EvalRun:
    device: str = device()


@dataclass
class FtEvalConfig:
    perplexity: PerplexityEval
    pubmedqa: PubmedqaEval
    cloze: ClozeEval
    completions: CompletionsEval
    run: EvalRun
    preset: str


# --- lmlab dpo ------------------------------------------------------------------------------------------------

@dataclass
class PairsData:
    source: str
    context_tokens: int = key(min=1)
    train_pairs: int = key(min=0)
    eval_pairs: int = key(min=0)
    sample_tokens: int = key(min=1)        # pubmed-spin: the starting model's sampled reply, at most this long


@dataclass
class DpoLoss:
    beta: float = key(min=0.0)
    max_length: int = key(min=8)
    precompute_ref: bool
    loss_type: str


@dataclass
class DpoTrain:
    steps: int = key(min=1)
    batch_size: int = key(min=1)
    grad_accum: int = key(min=1)
    lr: float = key(min=0.0)
    warmup_steps: int = key(min=0)
    seed: int
    device: str = device()
    threads: int = threads()


@dataclass
class DpoEval:
    pubmedqa_questions: int = key(min=1)
    pubmedqa_max_prompt_tokens: int = key(min=8)
    general_corpus: str
    general_chars: int = key(min=0)
    window: int = key(min=2)
    stride: int = key(min=1)
    generations: int = key(min=0)
    max_new_tokens: int = key(min=1)
    kl_samples: int = key(min=0)           # held-out prompts whose own-sample KL is measured after training


@dataclass
class DpoConfig:
    model: ModelName
    pairs: PairsData
    dpo: DpoLoss
    train: DpoTrain
    eval: DpoEval
    lora: Lora
    log: Log
    preset: str


# --- lmlab rl -------------------------------------------------------------------------------------------------

@dataclass
class RlData:
    prompt_tokens: int = key(min=8)        # lm-eval's PubMedQA prompt, the abstract cut from the front to fit
    train_questions: int = key(min=0)      # PubMedQA training questions used (0 = all 437; never a test id)


@dataclass
class Grpo:
    num_generations: int = key(min=2)      # completions per prompt: the group whose rewards are compared
    max_completion_tokens: int = key(min=1)
    temperature: float = key(min=0.0, below=10.0)
    beta: float = key(min=0.0)             # KL penalty to the reference (0 = none, TRL's default)


@dataclass
class RlTrain:
    steps: int = key(min=1)
    batch_size: int = key(min=1)           # completions per optimizer step (a multiple of num_generations)
    lr: float = key(min=0.0)
    warmup_steps: int = key(min=0)
    seed: int
    device: str = device()
    threads: int = threads()


@dataclass
class RlEval:
    pubmedqa_questions: int = key(min=1)   # official test ids, lm-eval protocol (500 = all)
    max_prompt_tokens: int = key(min=8)
    resamples: int = key(min=100)


@dataclass
class RlConfig:
    model: ModelName
    data: RlData
    grpo: Grpo
    train: RlTrain
    eval: RlEval
    lora: Lora
    log: Log
    preset: str


# --- lmlab run: the study -------------------------------------------------------------------------------------

@dataclass
class StudyTrain:
    models: list[str] = key(item_choices=RecurrentModel.ARCHES + TransformerModel.ARCHES)


@dataclass
class StudyScaling:
    models: list[str] = key(item_choices=RecurrentModel.ARCHES + TransformerModel.ARCHES)
    widths: list[int]                      # recurrent: emb = hidden size; transformer: d_model (d_ff = 4x)
    budgets: list[float]                   # minutes of training + validation per run
    overrides: list[str]                   # train keys of every run


@dataclass
class StudyEval:
    corpora: list[str]


@dataclass
class StudySample:
    prompts: list[str]
    strategies: list[dict[str, Any]]       # each: strategy, then the settings that differ from the defaults
    samples: int = key(min=1)
    seed: int
    max_tokens: int = key(min=1)


@dataclass
class SizeExperiment:
    train_docs: list[int]
    overrides: list[str]                   # finetune keys shared by every size


@dataclass
class TaskExperiment:
    starts: list[str]                      # "base" (the pretrained model) or a domain fine-tune's mode
    modes: list[str] = key(item_choices=("full", "lora"))
    overrides: list[str]                   # finetune keys of every task run (steps, sequence length, ...)
    shots: list[int]                       # PubMedQA (lm-eval protocol) settings the task models are scored in


@dataclass
class StudyFinetune:
    models: list[str]                      # each gets the domain fine-tunes and the harness; the first also
    dataset: str                           # the data-size experiment and DPO
    modes: list[str] = key(item_choices=("full", "lora"))
    overrides: list[str]                   # finetune keys of every domain fine-tune
    sizes: SizeExperiment
    task: TaskExperiment


@dataclass
class StudyDpo:
    start: str                             # "base" or one of finetune.modes
    sources: list[str]


@dataclass
class StudyRl:
    start: str                             # "base" or one of finetune.modes (of the first model)


@dataclass
class StudyConfig:
    train: StudyTrain
    scaling: StudyScaling
    eval: StudyEval
    sample: StudySample
    finetune: StudyFinetune
    dpo: StudyDpo
    rl: StudyRl
    preset: str

"""The ``lmlab`` command: parses arguments, calls a recipe, prints what it returns (tables or JSON).

Progress and messages go to stderr through the ``lmlab`` logger; stdout carries only results.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

from lmlab.errors import LmlabError
from lmlab.generation import STRATEGIES, SamplingSettings

log = logging.getLogger("lmlab")


def _train(args) -> None:
    from lmlab.recipes import train

    train.run(train.configure(args.model, args.preset, args.overrides), args.out, resume=args.resume)


def _data(args) -> None:
    from lmlab.recipes import data

    data.list_corpora() if args.data_command == "list" else data.download(args.name, args.mirror)


def _eval(args) -> None:
    from lmlab.recipes import evaluate
    from lmlab.report.comparison import write_comparison
    from lmlab.report.tables import eval_table

    rows = evaluate.run(args.runs, args.corpus, per_token=bool(args.tokens))
    if args.tokens:
        rows, tokens = rows
        args.tokens.parent.mkdir(parents=True, exist_ok=True)
        args.tokens.write_text("".join(json.dumps(r) + "\n" for r in tokens), encoding="utf-8")
        log.info("%d per-token records written to %s", len(tokens), args.tokens)
    print(json.dumps(rows, indent=2) if args.json else eval_table(rows))
    if args.compare:
        summary = write_comparison(rows, args.compare)
        log.info("comparison written to %s/cross_domain.{md,csv,png}", args.compare)
        if "degrades_least" in summary:
            log.info("degrades least: %s, most: %s", summary["degrades_least"], summary["degrades_most"])


def _sample(args) -> None:
    from lmlab.recipes import sample
    from lmlab.report.tables import side_by_side, summary_table

    if args.max_tokens < 1:
        raise LmlabError(f"--max-tokens {args.max_tokens} is not allowed: give at least 1")
    try:
        settings = [SamplingSettings(st, args.temperature, args.top_k, args.top_p, args.repetition_penalty,
                                     args.max_tokens) for st in (args.strategy or ["greedy"])]
    except ValueError as e:
        raise LmlabError(str(e)) from e
    result = sample.run(args.runs, args.prompt if args.prompt is not None else [""], settings, seed=args.seed,
                        samples=args.samples, judge=args.judge, out=args.out, ban_unk=args.ban_unk)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(side_by_side(result["samples"]))
        print(summary_table(result["summary"]))


def _finetune(args) -> None:
    from lmlab.recipes import finetune

    dataset = f"text:{args.text_file}" if args.text_file else f"jsonl:{args.jsonl}" if args.jsonl else args.dataset
    cfg = finetune.configure(args.model, dataset, args.preset, args.overrides, lora=args.lora, task=args.task)
    finetune.run(cfg, args.out, resume=args.resume)


def _ft_eval(args) -> None:
    from lmlab import results
    from lmlab.recipes import ft_eval
    from lmlab.report.tables import finetune_table

    evaluated = ft_eval.run(args.models, ft_eval.configure(args.preset, args.overrides), out=args.out, names=args.names,
                            task=args.task)
    if args.task:
        from lmlab.report.pretrained import qa_rows
        from lmlab.report.tables import pubmedqa_table

        print(pubmedqa_table(qa_rows({}, {(name, "task"): e for name, e in evaluated.items()})))
    elif args.json:
        dicts = [results.as_dict(r) for r in evaluated.values()]
        print(json.dumps(dicts if len(dicts) > 1 else dicts[0], indent=2))
    elif len(evaluated) > 1:
        table = finetune_table(evaluated)
        print(table)
        if args.out:
            (Path(args.out) / "comparison.md").write_text(table + "\n", encoding="utf-8")


def _rl(args) -> None:
    from lmlab.recipes import rl

    rl.run(rl.configure(args.model, args.preset, args.overrides), args.out)


def _serve(args) -> None:
    try:
        import uvicorn
    except ImportError as e:
        raise LmlabError("lmlab serve needs its extra: pip install 'lmlab[serve]'") from e
    from lmlab.serve.app import create_app
    from lmlab.serve.models import ModelSet, last_study, study_models

    study = args.study or (None if args.models else last_study())
    if study is not None and not study.is_dir():
        raise LmlabError(f"study directory {study} not found: give the --out of a finished lmlab run")
    specs = args.models or (study_models(study) if study else [])
    if not specs:
        raise LmlabError("no models to serve: give PTB run directories or pretrained model names, or run "
                         "`lmlab run --preset smoke --out runs/smoke` first")
    app = create_app(ModelSet(specs), study)
    log.info("lmlab serve: http://%s:%d (%d models)", args.host, args.port, len(specs))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _dpo(args) -> None:
    from lmlab.recipes import dpo

    dpo.run(dpo.configure(args.model, args.pairs, args.preset, args.overrides, lora=args.lora), args.out)


def _models(args) -> None:
    from lmlab.pretrained import registry

    for row in registry.list_models():
        state = f"cached at {row['path']}" if row["cached"] else "not converted yet"
        print(f"{row['name']:<16} {row['source']:<32} {state}  {row['description']}")


def _run(args) -> None:
    from lmlab.recipes import study

    study.run(args.preset, args.out, only=args.only, skip=args.skip, overrides=args.overrides)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    shared = _shared_options()
    _word_level_commands(sub, shared)
    _pretrained_commands(sub, shared)
    _study_and_data_commands(sub, shared)
    return parser


def _shared_options() -> SimpleNamespace:
    """Options that several commands take, declared once as parent parsers."""
    preset = argparse.ArgumentParser(add_help=False)
    preset.add_argument("--preset", default="cpu", help="smoke, cpu or gpu (default: cpu)")
    preset.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=10 (repeatable)")
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=int, default=0,
                         help="torch threads (0 = torch's default; use 1 when other jobs share the CPU)")
    resume = argparse.ArgumentParser(add_help=False)
    resume.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    return SimpleNamespace(preset=preset, threads=threads, resume=resume)


def _word_level_commands(sub, shared: SimpleNamespace) -> None:
    """train, eval, sample: the from-scratch word-level models."""
    p = sub.add_parser("train", parents=[shared.preset, shared.threads, shared.resume], help="train a word-level LM (rnn, gru, lstm, transformer)")
    p.add_argument("--model", required=True, help="rnn, gru, lstm or transformer")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", parents=[shared.threads], help="perplexity of trained runs on corpora they never saw")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--corpus", action="append", required=True, metavar="SPEC",
                   help="ptb:test, wikitext2:test, wikitext2:valid, shakespeare, pubmed, pubmedqa, "
                        "file:PATH (raw text) or tokens:PATH (already PTB-style); repeatable")
    p.add_argument("--json", action="store_true", help="print one JSON object per (run, corpus)")
    p.add_argument("--compare", type=Path, metavar="DIR",
                   help="also write cross_domain.{md,csv,png} to DIR (needs ptb:test among the corpora)")
    p.add_argument("--tokens", type=Path, metavar="FILE",
                   help="also write every scored token as a JSON line: word, token, nll, bits, prob, rank, top-5")
    p.set_defaults(func=_eval)

    p = sub.add_parser("sample", parents=[shared.threads], help="generate from trained runs, side by side, with text statistics")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--prompt", action="append", default=None, help="repeatable; '' starts from <eos>")
    p.add_argument("--strategy", action="append", default=None, choices=STRATEGIES, help="repeatable (default: greedy)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1, help="seeds per stochastic strategy (seed, seed+1, …)")
    p.add_argument("--judge", type=Path, metavar="RUN_DIR",
                   help="model that scores fluency (default: the best other model given)")
    p.add_argument("--ban-unk", action="store_true", help="word-level models never emit <unk>")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.set_defaults(func=_sample)


def _pretrained_commands(sub, shared: SimpleNamespace) -> None:
    """finetune, ft-eval, dpo, models: pretrained causal LMs."""
    p = sub.add_parser("finetune", parents=[shared.preset, shared.threads, shared.resume],
                       help="fine-tune a pretrained LM on a domain corpus (full or LoRA)")
    p.add_argument("--model", help="packaged name (smollm2-135m, gemma3-270m), .gguf file, save_pretrained "
                                   "directory or hub id (default: the preset's, smollm2-135m)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="pubmed (default), pubmedqa, text:PATH or jsonl:PATH")
    source.add_argument("--text-file", type=Path, help="your own corpus: UTF-8 text, documents separated by blank lines")
    source.add_argument("--jsonl", type=Path, help="your own corpus: one JSON object a line with 'text'")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of all weights")
    p.add_argument("--task", choices=("lm", "pubmedqa"),
                   help="lm: language modelling on the corpus (default); pubmedqa: task fine-tuning on PubMedQA "
                        "verdicts (training ids only), the checkpoint chosen on validation accuracy")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("ft-eval", parents=[shared.preset, shared.threads],
                       help="domain/general perplexity, PubMedQA, fill-in-the-blank and completions of pretrained LMs")
    p.add_argument("models", nargs="+", metavar="MODEL_OR_DIR")
    p.add_argument("--out", type=Path, help="write NAME.json per model (and comparison.md) here")
    p.add_argument("--name", action="append", dest="names", help="file name per model, e.g. before, after")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--task", action="store_true",
                   help="PubMedQA alone, zero-shot: for a model fine-tuned with finetune --task pubmedqa")
    p.set_defaults(func=_ft_eval)

    p = sub.add_parser("dpo", parents=[shared.preset, shared.threads],
                       help="align a model with DPO (TRL) on preference pairs, measured before and after")
    p.add_argument("--model", help="starting model: a fine-tune's DIR/model, packaged name, .gguf or hub id")
    p.add_argument("--pairs", help="general (default), pubmedqa or jsonl:PATH")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the saved model)")
    p.set_defaults(func=_dpo)

    p = sub.add_parser("rl", parents=[shared.preset, shared.threads],
                       help="reinforcement learning (TRL's GRPO) on PubMedQA with the correct verdict as reward")
    p.add_argument("--model", help="starting policy: a packaged name, .gguf, directory or hub id")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.set_defaults(func=_rl)

    p = sub.add_parser("models", help="pretrained models lmlab knows")
    p.add_subparsers(dest="models_command", required=True).add_parser(
        "list", help="packaged models, where they come from and whether they are converted and cached")
    p.set_defaults(func=_models)


def _study_and_data_commands(sub, shared: SimpleNamespace) -> None:
    """run (the whole study) and data (corpora)."""
    p = sub.add_parser("run", parents=[shared.threads],
                       help="run the study: train the PTB models, evaluate across domains, sample, fine-tune, "
                            "evaluate before/after, DPO, report")
    p.add_argument("--preset", default="cpu", help="smoke, cpu or gpu (default: cpu)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="study directory (default: runs)")
    p.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (train, scaling, eval, sample, finetune, ft-eval, dpo, rl, report)")
    p.add_argument("--skip", nargs="+", metavar="STEP", help="skip these steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study key, e.g. --set finetune.models=[\"gemma3-270m\"] (repeatable)")
    p.set_defaults(func=_run)

    p = sub.add_parser("serve", parents=[shared.threads],
                       help="a local page: sample from models side by side and see each one's per-token surprisal")
    p.add_argument("models", nargs="*", metavar="RUN_DIR_OR_MODEL",
                   help="PTB run directories, pretrained names or directories (default: the last study's models)")
    p.add_argument("--study", type=Path, help="a study directory: its models (when none are given) and its report")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_serve)

    p = sub.add_parser("data", help="list or download corpora")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("list", help="show each corpus, whether it is present and whether its sha256 matches")
    download = data_sub.add_parser("download", help="fetch a corpus into the data directory and verify it")
    download.add_argument("name")
    download.add_argument("--mirror", help="base URL of a mirror laid out like the data directory")
    p.set_defaults(func=_data)


class _Stderr(logging.StreamHandler):
    """Plain lines on whatever ``sys.stderr`` is when a message is logged (a caller may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging() -> None:
    """Messages of the ``lmlab`` logger on stderr (stdout is for results)."""
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging()
    if getattr(args, "threads", 0) > 0:
        import torch

        torch.set_num_threads(args.threads)
    resume_hint = "rerun the same command" + ("" if args.command == "run" else " (train/finetune: add --resume)")
    try:
        args.func(args)
    except LmlabError as e:
        print(f"lmlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmlab: interrupted; finished steps and the last checkpoint are kept: {resume_hint} to continue",
              file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"lmlab: error: the disk is full ({e.filename or 'while writing'}): free space and {resume_hint}; "
              "finished steps and checkpoints are kept", file=sys.stderr)
        return 28
    return 0

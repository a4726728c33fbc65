"""The ``lmlab`` command: parses arguments and calls a recipe; no logic of its own."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.generation import STRATEGIES, SamplingSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a word-level LM (rnn, lstm, transformer)")
    train.add_argument("--model", required=True, help="rnn, lstm or transformer")
    train.add_argument("--preset", default="cpu", help="smoke, cpu or gpu (default: cpu)")
    train.add_argument("--out", required=True, type=Path, help="run directory")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optim.lr=10 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")

    data = sub.add_parser("data", help="list or download corpora")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("list", help="show each corpus, whether it is present and whether its sha256 matches")
    download = data_sub.add_parser("download", help="fetch a corpus into the data directory and verify it")
    download.add_argument("name")
    download.add_argument("--mirror", help="base URL of a mirror laid out like the data directory")

    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=int, default=0,
                         help="torch threads (0 = torch's default; use 1 when other jobs share the CPU)")

    evaluate = sub.add_parser("eval", parents=[threads], help="perplexity of trained runs on corpora they never saw")
    evaluate.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("--corpus", action="append", required=True, metavar="SPEC",
                          help="ptb:test, wikitext2:test, wikitext2:valid, shakespeare, pubmed, pubmedqa, "
                               "file:PATH (raw text) or tokens:PATH (already PTB-style); repeatable")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object per (run, corpus)")
    evaluate.add_argument("--compare", type=Path, metavar="DIR",
                          help="also write cross_domain.{md,csv,png} to DIR (needs ptb:test among the corpora)")

    sample = sub.add_parser("sample", parents=[threads], help="generate from trained runs, side by side, with text statistics")
    sample.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    sample.add_argument("--prompt", action="append", default=None, help="repeatable; '' starts from <eos>")
    sample.add_argument("--strategy", action="append", default=None, choices=STRATEGIES,
                        help="repeatable (default: greedy)")
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-k", type=int, default=40)
    sample.add_argument("--top-p", type=float, default=0.9)
    sample.add_argument("--repetition-penalty", type=float, default=1.0)
    sample.add_argument("--max-tokens", type=int, default=30)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--samples", type=int, default=1, help="seeds per stochastic strategy (seed, seed+1, …)")
    sample.add_argument("--judge", type=Path, metavar="RUN_DIR",
                        help="model that scores fluency (default: the best other model given)")
    sample.add_argument("--json", action="store_true")
    sample.add_argument("--out", type=Path, help="also write the JSON here")

    finetune = sub.add_parser("finetune", help="fine-tune a pretrained LM on a domain corpus (full or LoRA)")
    finetune.add_argument("--model", help="packaged name (smollm2-135m, gemma3-270m), .gguf file, save_pretrained "
                                           "directory or hub id (default: the preset's, smollm2-135m)")
    source = finetune.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="pubmed (default), pubmedqa, text:PATH or jsonl:PATH")
    source.add_argument("--text-file", type=Path, help="your own corpus: UTF-8 text, documents separated by blank lines")
    source.add_argument("--jsonl", type=Path, help="your own corpus: one JSON object a line with 'text'")
    finetune.add_argument("--out", required=True, type=Path, help="run directory")
    finetune.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of all weights")
    finetune.add_argument("--preset", default="cpu", help="smoke, cpu or gpu (default: cpu)")
    finetune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a config key, e.g. --set data.train_docs=500 (repeatable)")
    finetune.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")

    ft_eval = sub.add_parser("ft-eval", parents=[threads],
                             help="domain/general perplexity, PubMedQA, fill-in-the-blank and completions of pretrained LMs")
    ft_eval.add_argument("models", nargs="+", metavar="MODEL_OR_DIR")
    ft_eval.add_argument("--preset", default="cpu", help="smoke, cpu or gpu (default: cpu)")
    ft_eval.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ft_eval.add_argument("--out", type=Path, help="write NAME.json per model (and comparison.md) here")
    ft_eval.add_argument("--name", action="append", dest="names", help="file name per model, e.g. before, after")
    ft_eval.add_argument("--json", action="store_true", help="print the results as JSON")

    dpo = sub.add_parser("dpo", help="align a model with DPO (TRL) on preference pairs, measured before and after")
    dpo.add_argument("--model", help="starting model: a fine-tune's DIR/model, packaged name, .gguf or hub id")
    dpo.add_argument("--pairs", help="general (default), pubmedqa or jsonl:PATH")
    dpo.add_argument("--out", required=True, type=Path, help="run directory")
    dpo.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the saved model)")
    dpo.add_argument("--preset", default="cpu", help="smoke, cpu or gpu (default: cpu)")
    dpo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    models = sub.add_parser("models", help="pretrained models lmlab knows")
    models.add_subparsers(dest="models_command", required=True).add_parser(
        "list", help="packaged models, where they come from and whether they are converted and cached")

    run = sub.add_parser("run", parents=[threads],
                         help="run the study: train the three models, evaluate across domains, sample, fine-tune, "
                              "evaluate before/after, DPO, report")
    run.add_argument("--preset", default="cpu", help="smoke, cpu or gpu (default: cpu)")
    run.add_argument("--out", type=Path, default=Path("runs"), help="study directory (default: runs)")
    run.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (train, eval, sample, finetune, ft-eval, dpo, report)")
    run.add_argument("--skip", nargs="+", metavar="STEP", help="skip these steps")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a study key, e.g. --set finetune.model=gemma3-270m (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "threads", 0) > 0:
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.command == "train":
            from lmlab.recipes import train

            train.run(args.model, args.preset, args.out, args.overrides, resume=args.resume)
        elif args.command == "data":
            from lmlab.recipes import data

            data.list_corpora() if args.data_command == "list" else data.download(args.name, args.mirror)
        elif args.command == "eval":
            from lmlab.recipes import evaluate

            evaluate.run(args.runs, args.corpus, as_json=args.json, compare=args.compare)
        elif args.command == "sample":
            from lmlab.recipes import sample

            try:
                settings = [SamplingSettings(st, args.temperature, args.top_k, args.top_p, args.repetition_penalty,
                                             args.max_tokens) for st in (args.strategy or ["greedy"])]
            except ValueError as e:
                raise LmlabError(str(e)) from e
            sample.run(args.runs, args.prompt if args.prompt is not None else [""], settings, seed=args.seed,
                       samples=args.samples, judge=args.judge, as_json=args.json, out=args.out)
        elif args.command == "finetune":
            from lmlab.recipes import finetune

            dataset = (f"text:{args.text_file}" if args.text_file else f"jsonl:{args.jsonl}" if args.jsonl
                       else args.dataset)
            cfg = finetune.configure(args.model, dataset, args.preset, args.overrides, lora=args.lora)
            finetune.run(cfg, args.out, resume=args.resume)
        elif args.command == "ft-eval":
            from lmlab.recipes import ft_eval

            ft_eval.run(args.models, args.preset, args.overrides, out=args.out, names=args.names, as_json=args.json)
        elif args.command == "dpo":
            from lmlab.recipes import dpo

            dpo.run(dpo.configure(args.model, args.pairs, args.preset, args.overrides, lora=args.lora), args.out)
        elif args.command == "models":
            from lmlab.hf import registry

            for row in registry.list_models():
                state = f"cached at {row['path']}" if row["cached"] else "not converted yet"
                print(f"{row['name']:<16} {row['source']:<32} {state}  {row['description']}")
        elif args.command == "run":
            from lmlab.recipes import study

            study.run(args.preset, args.out, only=args.only, skip=args.skip, overrides=args.overrides)
    except LmlabError as e:
        print(f"lmlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmlab: interrupted; finished steps and the last checkpoint are kept: rerun the same command "
              "(train/finetune: add --resume) to continue", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"lmlab: error: the disk is full ({e.filename or 'while writing'}): free space and rerun the same "
              "command; finished steps and checkpoints are kept", file=sys.stderr)
        return 28
    return 0

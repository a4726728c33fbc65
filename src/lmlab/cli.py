"""The ``lmlab`` command: parses arguments and calls a recipe; no logic of its own."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab.errors import LmlabError


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

    run = sub.add_parser("run", help="run the study: train the three models and print their perplexity table")
    run.add_argument("--preset", default="cpu", help="smoke, cpu or gpu (default: cpu)")
    run.add_argument("--out", type=Path, default=Path("runs"), help="study directory (default: runs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            from lmlab.recipes import train

            train.run(args.model, args.preset, args.out, args.overrides, resume=args.resume)
        elif args.command == "data":
            from lmlab.recipes import data

            data.list_corpora() if args.data_command == "list" else data.download(args.name, args.mirror)
        elif args.command == "run":
            from lmlab.recipes import study

            study.run(args.preset, args.out)
    except LmlabError as e:
        print(f"lmlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmlab: interrupted; finished epochs are saved: rerun with --resume to continue", file=sys.stderr)
        return 130
    return 0

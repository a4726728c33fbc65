"""How long the surprisal view takes: 1,000 words of PTB test text scored by each PTB architecture at its `cpu`
preset's size and by a pretrained model, through the page's own function (lmlab.surprisal.score).

Targets (issue #15): the three PTB models together under 2 s, a 135M pretrained model under 15 s on the 2-core
CPU. Weights do not change the time, so the PTB models are built from their presets with their initial weights
(and the real 10k PTB vocabulary); the pretrained model is the real one. Each time is the best of ``--repeats``
after one warm-up call.

    python benchmarks/serve_scoring.py [--words 1000] [--pretrained smollm2-135m] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lmlab import results
from lmlab.config import load_train, to_dict
from lmlab.data.corpora import split_path
from lmlab.data.vocab import Vocabulary, read_words
from lmlab.data.word_corpus import split_files
from lmlab.families import family_of
from lmlab.pretrained import registry
from lmlab.surprisal import Pretrained, score
from lmlab.trained import TrainedModel


def ptb_model(arch: str, vocab: Vocabulary) -> TrainedModel:
    config = load_train(arch, "cpu")
    family = family_of(arch)
    model = family.build(to_dict(config.model), len(vocab)).eval()
    final = results.TrainFinal.__new__(results.TrainFinal)  # not read by scoring
    return TrainedModel(arch, Path(arch), config, vocab, model, family, final)


def timed(model, text: str, repeats: int) -> tuple[float, dict]:
    result = score(model, text)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = score(model, text)
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=1000)
    parser.add_argument("--pretrained", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lines = split_path("ptb", "test").read_text(encoding="utf-8").splitlines()
    words, text_lines = 0, []
    for line in lines:  # whole lines until the word count is reached
        text_lines.append(line)
        words += len(line.split())
        if words >= args.words:
            break
    text = "\n".join(text_lines)
    vocab = Vocabulary.build(read_words(split_files("ptb")["train"]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {words} words of PTB test "
          f"({len(text_lines)} lines)\n")
    print(f"{'model':<16}{'params':>12}{'targets':>9}{'seconds':>9}{'targets/s':>11}")
    total = 0.0
    for arch in ("rnn", "lstm", "transformer"):
        model = ptb_model(arch, vocab)
        seconds, result = timed(model, text, args.repeats)
        total += seconds
        params = sum(p.numel() for p in model.model.parameters())
        n = result["summary"]["targets"]
        print(f"{arch:<16}{params:>12,}{n:>9}{seconds:>9.3f}{n / seconds:>11,.0f}")
    print(f"{'3 PTB models':<16}{'':>12}{'':>9}{total:>9.3f}   (target < 2 s)")
    model, tokenizer = registry.load(args.pretrained)
    seconds, result = timed(Pretrained(args.pretrained, model.eval(), tokenizer), text, args.repeats)
    n = result["summary"]["targets"]
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.pretrained:<16}{params:>12,}{n:>9}{seconds:>9.3f}{n / seconds:>11,.0f}   (target < 15 s)")


if __name__ == "__main__":
    main()

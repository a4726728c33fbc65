"""Word-level text as the standard PTB setup reads it: whitespace tokens, one ``<eos>`` per line.

The vocabulary is built from the training split only; every other word maps to ``<unk>``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from lmlab.errors import LmlabError

EOS = "<eos>"
UNK = "<unk>"


def read_words(path: Path) -> list[str]:
    """Whitespace tokens of every line followed by ``<eos>``; blank lines count as a bare ``<eos>``."""
    words: list[str] = []
    try:
        with Path(path).open(encoding="utf-8") as f:
            for line in f:
                words.extend(line.split())
                words.append(EOS)
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): convert it first") from e
    return words


class Vocabulary:
    """Word <-> id, ordered by training frequency (most frequent first, ties by spelling)."""

    def __init__(self, counts: dict[str, int]):
        self.counts = dict(counts)
        for special in (EOS, UNK):
            self.counts.setdefault(special, 0)
        self.itos = sorted(self.counts, key=lambda w: (-self.counts[w], w))
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.unk_id = self.stoi[UNK]
        self.eos_id = self.stoi[EOS]

    @classmethod
    def build(cls, words: list[str]) -> "Vocabulary":
        return cls(Counter(words))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, words: list[str]) -> torch.Tensor:
        unk = self.unk_id
        return torch.tensor([self.stoi.get(w, unk) for w in words], dtype=torch.long)

    def decode(self, ids) -> list[str]:
        return [self.itos[int(i)] for i in ids]

    def save(self, path: Path) -> None:
        Path(path).write_text("".join(f"{w}\t{self.counts[w]}\n" for w in self.itos), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        try:
            rows = [line.rstrip("\n").split("\t") for line in Path(path).read_text(encoding="utf-8").splitlines()]
            vocab = cls({w: int(c) for w, c in rows})
        except (OSError, ValueError) as e:
            raise LmlabError(f"cannot read vocabulary {path} ({e}): retrain the run or restore vocab.txt") from e
        return vocab

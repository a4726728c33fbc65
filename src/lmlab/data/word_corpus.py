"""A word-level corpus with train/valid/test splits, encoded with a vocabulary built from train only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.data import corpora
from lmlab.data.vocab import Vocabulary, read_words
from lmlab.errors import LmlabError

SPLITS = ("train", "valid", "test")


@dataclass
class WordCorpus:
    name: str
    vocab: Vocabulary
    splits: dict[str, torch.Tensor]  # split -> token ids
    oov_counts: dict[str, int]  # split -> words mapped to <unk> that were not literally <unk>


def split_files(corpus: str) -> dict[str, Path]:
    """Files of the three splits: a registered corpus name, or a folder holding {train,valid,test}.txt."""
    if corpus in corpora.CORPORA:
        return {s: corpora.split_path(corpus, s) for s in SPLITS}
    folder = Path(corpus).expanduser()
    if folder.is_dir():
        files = {s: folder / f"{s}.txt" for s in SPLITS}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise LmlabError(f"corpus folder {folder} lacks {', '.join(missing)}: it needs train.txt, valid.txt, test.txt")
        return files
    raise LmlabError(
        f"unknown corpus '{corpus}': use a registered name ({', '.join(corpora.CORPORA)}) "
        "or a folder with train.txt, valid.txt and test.txt"
    )


def load_word_corpus(corpus: str, vocab: Vocabulary | None = None) -> WordCorpus:
    """Read and encode all splits; the vocabulary comes from the training split unless one is given."""
    files = split_files(corpus)
    words = {s: read_words(p) for s, p in files.items()}
    vocab = vocab or Vocabulary.build(words["train"])
    splits = {s: vocab.encode(w) for s, w in words.items()}
    oov = {s: sum(1 for w in ws if w not in vocab) for s, ws in words.items()}
    return WordCorpus(corpus, vocab, splits, oov)

"""Shared fixtures. Tests run in parallel (pytest-xdist), so each process uses one thread."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def data_dir() -> Path:
    return Path(os.environ.get("LMLAB_DATA_DIR") or SHARED_DATA)


@pytest.fixture
def ptb_available():
    if not (data_dir() / "ptb" / "ptb.train.txt").is_file():
        pytest.skip("PTB not in the data directory (set LMLAB_DATA_DIR)")
    os.environ["LMLAB_DATA_DIR"] = str(data_dir())
    return data_dir()


def write_tiny_corpus(parent: Path) -> Path:
    """A folder with train/valid/test.txt drawn from a small, learnable grammar."""
    rng = random.Random(0)
    subjects, verbs, objects = ["the cat", "a dog", "the bird"], ["sees", "eats", "likes"], ["fish", "seeds", "the ball"]

    def lines(n):
        return "".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} .\n" for _ in range(n))

    folder = parent / "tiny"
    folder.mkdir()
    (folder / "train.txt").write_text(lines(400))
    (folder / "valid.txt").write_text(lines(40))
    (folder / "test.txt").write_text(lines(40))
    return folder


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    return write_tiny_corpus(tmp_path)


def _train_tiny(tmp_path_factory, model: str) -> Path:
    from lmlab.cli import main

    folder = tmp_path_factory.mktemp(f"tiny_{model}")
    corpus = write_tiny_corpus(folder)
    run = folder / model
    assert main(["train", "--model", model, "--preset", "smoke", "--out", str(run), "--set", f"data.corpus={corpus}",
                 "--set", "data.max_eval_tokens=0", "--set", "train.epochs=2"]) == 0
    return run


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """One finished smoke-sized run per architecture, trained on the tiny corpus (a few seconds)."""
    return {m: _train_tiny(tmp_path_factory, m) for m in ("rnn", "lstm", "transformer")}

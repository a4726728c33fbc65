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


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """A folder with train/valid/test.txt drawn from a small, learnable grammar."""
    rng = random.Random(0)
    subjects, verbs, objects = ["the cat", "a dog", "the bird"], ["sees", "eats", "likes"], ["fish", "seeds", "the ball"]

    def lines(n):
        return "".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} .\n" for _ in range(n))

    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "train.txt").write_text(lines(400))
    (folder / "valid.txt").write_text(lines(40))
    (folder / "test.txt").write_text(lines(40))
    return folder

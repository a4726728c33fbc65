"""Fixtures of the Hugging Face tests (the tiny models themselves live in tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import data_dir


@pytest.fixture
def domain_data():
    """The shared corpora (PubMed, PubMedQA, WikiText-2 raw, Shakespeare) or a skip."""
    if not (data_dir() / "pubmed" / "abstracts.jsonl").is_file():
        pytest.skip("the PubMed corpora are not in the data directory (set LMLAB_DATA_DIR)")
    os.environ["LMLAB_DATA_DIR"] = str(data_dir())
    return data_dir()

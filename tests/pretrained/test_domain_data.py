"""Document-level splits, packing with the model's tokenizer, user corpora and their errors."""

from __future__ import annotations

import json

import pytest

from lmlab.errors import LmlabError
from lmlab.pretrained.domain_data import (
    Document,
    limit,
    load_domain,
    pack,
    pubmedqa_records,
    separator_id,
    start_ids,
)
from tests.conftest import gpt2_tokenizer


def test_packing_concatenates_documents_with_end_of_text_between():
    tok = gpt2_tokenizer()
    docs = [Document("a", "The cell divides."), Document("b", "Mitochondria make ATP in cells.")]
    sep = separator_id(tok)
    assert sep == tok.convert_tokens_to_ids("<|endoftext|>") == 50256
    assert start_ids(tok) == [sep]  # GPT-2 adds no BOS: documents start after an end-of-text
    expected = [sep] + tok("The cell divides.").input_ids + [sep] + tok("Mitochondria make ATP in cells.").input_ids + [sep]
    chunks = pack(docs, tok, seq_len=4)
    assert chunks.shape == (len(expected) // 4, 4)
    assert chunks.flatten().tolist() == expected[: chunks.numel()]


def test_packing_too_little_text_is_a_clear_error():
    with pytest.raises(LmlabError, match="fewer than one chunk"):
        pack([Document("a", "short")], gpt2_tokenizer(), seq_len=512)


def test_pubmedqa_test_ids_are_never_in_training(domain_data):
    records = pubmedqa_records()
    truth = set(json.loads((domain_data / "pubmedqa" / "test_ground_truth.json").read_text()))
    assert {r.id for r in records["test"]} == truth and len(truth) == 500
    assert not truth & {r.id for r in records["train"] + records["valid"]}
    splits = load_domain("pubmedqa")
    assert {d.id for d in splits.test} == truth
    assert not truth & {d.id for d in splits.train + splits.valid}


def test_pubmed_splits_are_disjoint_stable_and_cover_every_document(domain_data):
    a, b = load_domain("pubmed"), load_domain("pubmed")
    ids = [{d.id for d in s} for s in (a.train, a.valid, a.test)]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 18138
    assert [d.id for d in a.test] == [d.id for d in b.test]
    assert 250 < len(a.test) < 500 and 250 < len(a.valid) < 500
    # the size knob draws from the training split only
    small = limit(a.train, 50, seed=1)
    assert len(small) == 50 and {d.id for d in small} <= ids[0]


def test_user_corpora_and_their_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"Document number {i} about kidneys." for i in range(40)))
    splits = load_domain(f"text:{text}")
    assert len(splits.train) + len(splits.valid) + len(splits.test) == 40
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(5)) + "\n{broken\n")
    with pytest.raises(LmlabError, match=r"docs.jsonl:6 is not a JSON object"):
        load_domain(f"jsonl:{jsonl}")
    with pytest.raises(LmlabError, match="not found"):
        load_domain(f"text:{tmp_path / 'missing.txt'}")
    with pytest.raises(LmlabError, match="unknown dataset"):
        load_domain("wikipedia")


def test_the_document_separator_is_the_real_end_of_text_token():
    """<|endoftext|> where the vocabulary has it, even when the tokenizer also names it its unknown token
    (SmolLM2-Instruct: unk = <|endoftext|> = 0, eos = <|im_end|> = 2); else EOS (Gemma's <eos>)."""
    from types import SimpleNamespace

    smol = SimpleNamespace(get_vocab=lambda: {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2},
                           unk_token_id=0, eos_token_id=2)
    gemma = SimpleNamespace(get_vocab=lambda: {"<pad>": 0, "<eos>": 1, "<bos>": 2}, unk_token_id=3, eos_token_id=1)
    assert separator_id(smol) == 0 and separator_id(gemma) == 1
    from tests.conftest import gpt2_tokenizer

    assert separator_id(gpt2_tokenizer()) == 50256


def test_packing_for_a_bos_model_starts_every_chunk_with_bos():
    """Gemma's tokenizer puts <bos> before every text: each chunk starts with it (documents that start a chunk
    bring their own), and the documents' tokens still follow in order, none dropped but the ragged tail."""
    from types import SimpleNamespace

    class BosTokenizer:
        bos_token_id, eos_token_id = 2, 1

        def get_vocab(self):
            return {"<pad>": 0, "<eos>": 1, "<bos>": 2}

        def __call__(self, text, add_special_tokens=True):
            return SimpleNamespace(input_ids=[2] * add_special_tokens + [10 + ord(c) % 80 for c in text])

    tok = BosTokenizer()
    docs = [Document(str(i), f"Document {i} on renal physiology and its many words.") for i in range(5)]
    chunks = pack(docs, tok, seq_len=16).tolist()
    stream = [t for d in docs for t in [2, *tok(d.text, add_special_tokens=False).input_ids, 1]]
    assert len(chunks) > 10 and all(c[0] == 2 and c[1] != 2 for c in chunks)  # <bos> first, never doubled
    packed, source = [t for c in chunks for t in c if t != 2], [t for t in stream if t != 2]
    assert packed == source[: len(packed)] and len(source) - len(packed) < 16  # in order; only the tail dropped

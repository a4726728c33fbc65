"""Domain corpora for fine-tuning, split by document, tokenised with the model's tokenizer and packed.

Splits are decided per document by a hash of its id, so they never depend on file order or on how much
data a run uses, and a document is in exactly one split:
- ``pubmed``: PubMed abstracts (title + abstract); 2% test, 2% valid, the rest train.
- ``pubmedqa``: PubMedQA PQA-L; the 500 official test ids (``test_ground_truth.json``) are the test split
  and are never trained on; of the other 500, 10% valid, the rest train. A document is the question's
  abstract followed by its expert long answer.
- ``text:PATH`` (documents separated by blank lines) or ``jsonl:PATH`` (a ``text`` field, or ``title`` and
  ``abstract``): a user's corpus; 5% test, 5% valid.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.data import documents, user_files
from lmlab.data.documents import Document, QARecord
from lmlab.errors import LmlabError

DATASETS = "pubmed, pubmedqa, text:PATH, jsonl:PATH"


@dataclass
class DomainSplits:
    name: str
    train: list[Document]
    valid: list[Document]
    test: list[Document]


def bucket(doc_id: str) -> float:
    """A stable number in [0, 1) per document id."""
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 16**8


def _split(docs: list[Document], test: float, valid: float, name: str) -> DomainSplits:
    out = DomainSplits(name, [], [], [])
    for d in docs:
        b = bucket(d.id)
        (out.test if b < test else out.valid if b < test + valid else out.train).append(d)
    return out


def pubmedqa_records() -> dict[str, list[QARecord]]:
    """PubMedQA by split: ``test`` is exactly the official test ids; ``valid``/``train`` share the rest."""
    test_ids = documents.pubmedqa_test_ids()
    splits = {"train": [], "valid": [], "test": []}
    for record in documents.pubmedqa_questions():
        split = "test" if record.id in test_ids else "valid" if bucket(record.id) < 0.1 else "train"
        splits[split].append(record)
    return splits


def load_domain(dataset: str) -> DomainSplits:
    name, _, arg = dataset.partition(":")
    if name == "pubmed":
        return _split(documents.pubmed_documents(), 0.02, 0.02, "pubmed")
    if name == "pubmedqa":
        records = pubmedqa_records()
        docs = {s: [Document(r.id, f"{r.context}\n{r.long_answer}") for r in rs] for s, rs in records.items()}
        return DomainSplits("pubmedqa", docs["train"], docs["valid"], docs["test"])
    if name in ("text", "jsonl"):
        return _split(_user_documents(name, Path(arg).expanduser()), 0.05, 0.05, dataset)
    raise LmlabError(f"unknown dataset '{dataset}': use one of {DATASETS}")


def _user_documents(kind: str, path: Path) -> list[Document]:
    if kind == "text":
        texts = [p.strip() for p in user_files.read_text(path, "corpus file").split("\n\n") if p.strip()]
    else:
        texts = []
        for n, row in user_files.read_jsonl(path, "corpus file"):
            text = row.get("text") or "\n".join(str(row[k]) for k in ("title", "abstract") if row.get(k))
            if not isinstance(text, str):
                raise LmlabError(f"{path}:{n} has a 'text' that is not a string ({type(text).__name__}): give text")
            if not text.strip():
                raise LmlabError(f"{path}:{n} has no 'text' (or 'title'/'abstract') field")
            texts.append(text)
    if len(texts) < 3:
        raise LmlabError(f"{path} holds {len(texts)} documents: at least 3 are needed for train/valid/test")
    return [Document(hashlib.sha256(t.encode()).hexdigest()[:16], t) for t in texts]


# --- tokenising and packing --------------------------------------------------------------------------------

def separator_id(tokenizer) -> int:
    """The end-of-text token put between documents: ``<|endoftext|>`` when the vocabulary has it as a token of
    its own (GPT-2 50256; SmolLM2 0, which SmolLM2-Instruct also names its unknown token), else the EOS token
    (Gemma's ``<eos>``). Chat models' end-of-turn tokens (SmolLM2-Instruct's EOS ``<|im_end|>``) are not
    document separators, so ``<|endoftext|>`` is looked up first."""
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return vocab["<|endoftext|>"]
    if tokenizer.eos_token_id is None:
        raise LmlabError("the tokenizer has neither <|endoftext|> nor an EOS token to separate documents")
    return tokenizer.eos_token_id


def bos_ids(tokenizer) -> list[int]:
    """``[BOS]`` when the tokenizer puts it before every text by itself (Gemma), else ``[]`` (GPT-2, SmolLM2)."""
    probe = tokenizer("a").input_ids
    if tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id:
        return [tokenizer.bos_token_id]
    return []


def start_ids(tokenizer) -> list[int]:
    """What a document starts with: the tokenizer's BOS if it adds one (Gemma), else the separator, so the
    first word of every document is predicted from a start-of-document context and is scored too."""
    return bos_ids(tokenizer) or [separator_id(tokenizer)]


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def pack(docs: list[Document], tokenizer, seq_len: int) -> torch.Tensor:
    """Concatenate ``start + document + separator`` for every document and cut into ``[n, seq_len]`` chunks
    (the ragged tail is dropped), the standard causal-LM packing. A model with a BOS of its own (Gemma) gets it
    at the head of every chunk that does not start a document already: it never saw a sequence without one, and
    chunks cut mid-text would otherwise teach it (and measure it on) a layout it was not made for."""
    start, sep, bos = start_ids(tokenizer), separator_id(tokenizer), bos_ids(tokenizer)
    stream: list[int] = []
    for d in docs:
        ids = encode(tokenizer, d.text)
        stream += (start if start != [sep] or not stream else []) + ids + [sep]
    chunks, i = [], 0
    while True:
        head = bos if bos and stream[i:i + len(bos)] != bos else []
        if i + seq_len - len(head) > len(stream):
            break
        chunks.append(head + stream[i:i + seq_len - len(head)])
        i += seq_len - len(head)
    if not chunks:
        raise LmlabError(f"{len(docs)} documents hold {len(stream)} tokens, fewer than one chunk of {seq_len}: "
                         "use more data or a shorter data.seq_len")
    return torch.tensor(chunks, dtype=torch.long)


def limit(docs: list[Document], max_docs: int = 0, seed: int = 0) -> list[Document]:
    """A seeded random subset of ``max_docs`` documents (0 = all): the training-set size knob."""
    if not max_docs or max_docs >= len(docs):
        return list(docs)
    return random.Random(seed).sample(docs, max_docs)

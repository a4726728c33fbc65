"""The document corpora, read once: PubMed abstracts and PubMedQA questions, in file order.

Every consumer (word-level evaluation texts, fine-tuning splits, QA, preference pairs) reads them through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lmlab.data import corpora
from lmlab.errors import LmlabError


@dataclass
class Document:
    id: str
    text: str


@dataclass
class QARecord:
    id: str
    question: str
    context: str  # the abstract's sections, joined by spaces
    long_answer: str
    decision: str  # yes | no | maybe
    contexts: tuple[str, ...] = ()  # the abstract's sections as given (lm-eval joins them with line ends)


def pubmed_documents(limit: int | None = None) -> list[Document]:
    """Title, a line end, then the abstract; the first ``limit`` in file order (None = all)."""
    docs = []
    with corpora.split_path("pubmed", "all").open(encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(docs) >= limit:
                break
            row = json.loads(line)
            docs.append(Document(row["pmid"], f"{row['title']}\n{row['abstract']}"))
    return docs


def pubmedqa_questions() -> list[QARecord]:
    """Every PQA-L question in file order."""
    data = json.loads(corpora.split_path("pubmedqa", "all").read_text(encoding="utf-8"))
    return [QARecord(qid, q["QUESTION"], " ".join(q["CONTEXTS"]), q["LONG_ANSWER"], q["final_decision"],
                     tuple(q["CONTEXTS"])) for qid, q in data.items()]


def pubmedqa_test_ids() -> set[str]:
    """The 500 official test ids (``test_ground_truth.json``)."""
    path = corpora.data_dir() / "pubmedqa" / "test_ground_truth.json"
    if not path.is_file():
        raise LmlabError(corpora.missing_message(corpora.get_corpus("pubmedqa"), path))
    return set(json.loads(path.read_text(encoding="utf-8")))

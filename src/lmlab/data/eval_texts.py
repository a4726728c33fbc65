"""Texts to evaluate word-level models on, named by a spec, each with the normalisation it needs.

Specs: ``ptb:SPLIT``, ``wikitext2:SPLIT`` (valid, test), ``wikitext2-raw``, ``shakespeare``, ``pubmed``
(the first 1,000 abstracts in file order, title then abstract; ``pubmed:all`` for all 18,138),
``pubmedqa`` (every question's abstract sentences and expert long answer), ``file:PATH`` (any UTF-8 text,
normalised as raw text) and ``tokens:PATH`` (text already in the training corpus's form: whitespace tokens,
one sentence a line, read exactly as training reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmlab.data import corpora, documents, user_files
from lmlab.errors import LmlabError

PUBMED_DEFAULT_ABSTRACTS = 1000


@dataclass
class EvalText:
    spec: str
    kind: str  # how to normalise: ptb | wikitext | raw (see lmlab.data.normalize)
    text: str


def load_eval_text(spec: str) -> EvalText:
    name, _, arg = spec.partition(":")
    if name in ("file", "tokens"):
        text = user_files.read_text(Path(arg), "text file")
        return EvalText(spec, "raw" if name == "file" else "ptb", text)
    if name == "ptb":
        return EvalText(spec, "ptb", corpora.split_path("ptb", arg or "test").read_text(encoding="utf-8"))
    if name == "wikitext2":
        return EvalText(spec, "wikitext", corpora.split_path("wikitext2", arg or "test").read_text(encoding="utf-8"))
    if name == "wikitext2-raw":
        return EvalText(spec, "raw", corpora.split_path("wikitext2-raw", "test").read_text(encoding="utf-8"))
    if name == "shakespeare":
        return EvalText(spec, "raw", corpora.split_path("shakespeare", "all").read_text(encoding="utf-8"))
    if name == "pubmed":
        if arg not in ("", "all") and not (arg.isdigit() and int(arg) > 0):
            raise LmlabError(f"bad corpus '{spec}': write pubmed, pubmed:N (N > 0 abstracts) or pubmed:all")
        limit = None if arg == "all" else int(arg or PUBMED_DEFAULT_ABSTRACTS)
        return EvalText(spec, "raw", "\n\n".join(d.text for d in documents.pubmed_documents(limit)))
    if name == "pubmedqa":
        paragraphs = [f"{q.context}\n\n{q.long_answer}" for q in documents.pubmedqa_questions()]
        return EvalText(spec, "raw", "\n\n".join(paragraphs))
    known = "ptb:SPLIT, wikitext2:SPLIT, wikitext2-raw, shakespeare, pubmed[:N|all], pubmedqa, file:PATH, tokens:PATH"
    raise LmlabError(f"unknown corpus '{spec}': use one of {known}")


def head(text: str, chars: int) -> str:
    """The first ``chars`` characters of ``text``, cut back to the last line end within them (0 = all)."""
    if not chars:
        return text
    return text[: text.rfind("\n", 0, chars) + 1] or text[:chars]

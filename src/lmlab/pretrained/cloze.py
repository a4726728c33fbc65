"""Fill-in-the-blank: a biomedical term is blanked in a held-out abstract (rule in :func:`domain_terms` and
:func:`cloze_items`); candidates are ranked by the log-likelihood of the rest of the sentence with each."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch

from lmlab.data.documents import Document
from lmlab.pretrained.domain_data import encode, start_ids
from lmlab.pretrained.likelihood import continuation_logprobs

_WORD = re.compile(r"(?<![A-Za-z-])[a-z]+(?:-[a-z]+)*(?![A-Za-z-])")  # whole lower-case words only


def domain_terms(domain_docs: list[Document], general_text: str, min_count: int = 10, ratio: float = 10.0,
                 min_length: int = 6) -> list[tuple[str, int]]:
    """The rule for "biomedical term": a lower-case word of at least ``min_length`` letters that occurs at least
    ``min_count`` times in the domain training documents and is at least ``ratio`` times more frequent there
    (per word) than in the general text (add-one smoothed). Returned with its domain count, most frequent first."""
    domain = Counter(_WORD.findall(" ".join(d.text for d in domain_docs)))
    general = Counter(_WORD.findall(general_text.lower()))
    n_domain, n_general = sum(domain.values()), sum(general.values())
    terms = [(w, c) for w, c in domain.items()
             if len(w) >= min_length and c >= min_count and (c / n_domain) / ((general[w] + 1) / n_general) >= ratio]
    return sorted(terms, key=lambda t: (-t[1], t[0]))


@dataclass
class ClozeItem:
    doc_id: str
    context: str  # everything before the blank
    answer: str
    rest: str  # the rest of the sentence after the blank
    candidates: list[str]


def cloze_items(docs: list[Document], terms: list[tuple[str, int]], n_items: int, n_candidates: int) -> list[ClozeItem]:
    """One item per held-out document: the first sentence (8-60 words, not the title) holding a term; the
    blank is the first term in it. The distractors are terms with the same last three letters (so grammar alone
    rarely decides: -ion, -ity, -ed, -ing ...), nearest to it in domain frequency rank, that do not occur in the
    sentence; when fewer share the ending, the nearest other terms fill in."""
    rank = {w: i for i, (w, _) in enumerate(terms)}
    items = []
    for d in docs:
        title, _, body = d.text.partition("\n")
        offset = len(title) + 1
        for m in re.finditer(r"[^.!?]+[.!?]", body):
            sentence = m.group(0)
            words = sentence.split()
            if not 8 <= len(words) <= 60:
                continue
            hit = next((t for t in _WORD.finditer(sentence) if t.group(0) in rank), None)
            if hit is None:
                continue
            answer = hit.group(0)
            present = set(_WORD.findall(sentence.lower()))
            r = rank[answer]
            neighbours = sorted((w for w in rank if w not in present),
                                key=lambda w: (w[-3:] != answer[-3:], abs(rank[w] - r), rank[w]))
            start = offset + m.start() + hit.start()
            items.append(ClozeItem(d.id, d.text[:start], answer, sentence[hit.end():],
                                   sorted([answer] + neighbours[: n_candidates - 1])))
            break
        if len(items) >= n_items:
            break
    return items


@torch.no_grad()
def cloze_accuracy(model, tokenizer, items: list[ClozeItem], context_tokens: int) -> dict:
    correct = 0
    for item in items:
        context = item.context.rstrip(" ")
        spaced = item.context.endswith(" ")
        prompt = start_ids(tokenizer) + encode(tokenizer, context)[-context_tokens:]
        conts = [encode(tokenizer, (" " if spaced else "") + c + item.rest) for c in item.candidates]
        scores = continuation_logprobs(model, prompt, conts)
        correct += item.candidates[max(range(len(scores)), key=scores.__getitem__)] == item.answer
    n = len(items)
    return {"accuracy": correct / n if n else float("nan"), "items": n,
            "chance": 1 / len(items[0].candidates) if items else float("nan")}

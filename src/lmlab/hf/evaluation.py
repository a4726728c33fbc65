"""The before/after harness for pretrained LMs: perplexity in three units, PubMedQA, fill-in-the-blank.

Every function takes a model and its tokenizer, so a base model and its fine-tune (or two models with
different tokenizers) go through exactly the same code.

- Perplexity: the text is scored with a sliding window (``window`` tokens of context, advanced by ``stride``;
  every token is scored once, with at least ``window - stride`` tokens before it except at the start). The
  text starts with the model's start-of-document token, so its first word is scored too. Token-level
  perplexity divides the total NLL by the number of scored tokens; word-level by the whitespace-separated
  words of the original text; byte-level by its UTF-8 bytes. The last two are tokenizer-independent.
- PubMedQA: zero-shot; the prompt is the abstract, the question and a fixed instruction; the prediction is
  the answer among " yes", " no", " maybe" with the highest total log-likelihood, reported raw and after
  contextual calibration (minus the scores for a content-free question).
- Cloze: a biomedical term is blanked in a held-out abstract (rule in :func:`domain_terms` and
  :func:`cloze_items`); candidates are ranked by the log-likelihood of the rest of the sentence with each.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlab.hf.domain_data import Document, QARecord, encode, start_ids

ANSWERS = ("yes", "no", "maybe")
PUBMEDQA_INSTRUCTION = "Answer the question with yes, no or maybe."


@dataclass
class TextScore:
    nll: float  # nats, summed over the text
    tokens: int
    words: int
    bytes: int

    def as_dict(self) -> dict:
        return {"nll": self.nll, "tokens": self.tokens, "words": self.words, "bytes": self.bytes,
                "token_ppl": math.exp(self.nll / self.tokens), "word_ppl": math.exp(self.nll / self.words),
                "byte_ppl": math.exp(self.nll / self.bytes), "bits_per_byte": self.nll / self.bytes / math.log(2)}


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def sliding_nll(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """(summed NLL, number of scored tokens) of ``ids[1:]`` given everything before, one window at a time."""
    if not 0 < stride <= window - 1:
        raise ValueError("need 0 < stride < window")
    device = _device(model)
    total, count, scored_to = 0.0, 0, 1  # ids[:scored_to] are context only or already scored
    while scored_to < len(ids):
        end = min(len(ids), max(scored_to + stride, window))
        begin = max(0, end - window)
        x = torch.tensor(ids[begin:end], device=device)[None]
        logits = model(input_ids=x).logits[0].float()
        first = scored_to - begin - 1  # logits[k] predicts ids[begin + k + 1]
        targets = x[0, scored_to - begin:]
        total += F.cross_entropy(logits[first:-1], targets, reduction="sum").item()
        count += len(targets)
        scored_to = end
    return total, count


def score_texts(model, tokenizer, texts: list[str], window: int, stride: int) -> TextScore:
    """Each text scored as its own document (start token + text)."""
    nll, tokens = 0.0, 0
    for text in texts:
        n, t = sliding_nll(model, start_ids(tokenizer) + encode(tokenizer, text), window, stride)
        nll, tokens = nll + n, tokens + t
    return TextScore(nll, tokens, sum(len(t.split()) for t in texts), sum(len(t.encode("utf-8")) for t in texts))


# --- PubMedQA ---------------------------------------------------------------------------------------------

def pubmedqa_prompt_ids(tokenizer, record: QARecord, max_tokens: int) -> list[int]:
    head = encode(tokenizer, "Abstract: ")
    tail = encode(tokenizer, f"\nQuestion: {record.question}\n{PUBMEDQA_INSTRUCTION}\nAnswer:")
    context = encode(tokenizer, record.context)
    room = max(0, max_tokens - len(head) - len(tail) - 1)
    context = context[len(context) - room:] if room else []  # keep the end: results sit next to the question
    return start_ids(tokenizer) + head + context + tail


@torch.no_grad()
def continuation_logprobs(model, prompt: list[int], continuations: list[list[int]]) -> list[float]:
    """log P(continuation | prompt), summed over its tokens, for each continuation (one padded batch)."""
    device = _device(model)
    seqs = [prompt + c for c in continuations]
    width = max(map(len, seqs))
    x = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(x)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    logp = model(input_ids=x, attention_mask=mask).logits.float().log_softmax(-1)
    out = []
    for i, c in enumerate(continuations):
        positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(c), device=device)
        out.append(logp[i, positions, torch.tensor(c, device=device)].sum().item())
    return out


@torch.no_grad()
def answer_scores(model, tokenizer, record: QARecord, max_tokens: int) -> list[float]:
    """log P(" yes" | prompt), log P(" no" | prompt), log P(" maybe" | prompt)."""
    answers = [encode(tokenizer, f" {a}") for a in ANSWERS]
    prompt = pubmedqa_prompt_ids(tokenizer, record, max_tokens)
    if all(len(a) == 1 for a in answers):  # one forward pass serves all three answers
        x = torch.tensor(prompt, device=_device(model))[None]
        logp = model(input_ids=x).logits[0, -1].float().log_softmax(-1)
        return [logp[a[0]].item() for a in answers]
    return continuation_logprobs(model, prompt, answers)


# A question with no content: its answer scores are the model's prior over the verdicts in this prompt.
CONTENT_FREE = QARecord("content-free", "N/A", "N/A", "", "")


@torch.no_grad()
def pubmedqa_accuracy(model, tokenizer, records: list[QARecord], max_tokens: int) -> dict:
    """Accuracy of the highest-scoring verdict, and the same after contextual calibration (Zhao et al., 2021):
    each verdict's score minus its score for a content-free question, which removes the model's fixed bias
    towards one answer, so the calibrated number says how much the abstract and question move the verdict."""
    prior = answer_scores(model, tokenizer, CONTENT_FREE, max_tokens)
    predictions, calibrated = [], []
    for r in records:
        scores = answer_scores(model, tokenizer, r, max_tokens)
        predictions.append(ANSWERS[max(range(3), key=scores.__getitem__)])
        calibrated.append(ANSWERS[max(range(3), key=lambda i: scores[i] - prior[i])])
    gold = [r.decision for r in records]
    majority, majority_n = Counter(gold).most_common(1)[0]
    return {
        "accuracy": sum(p == g for p, g in zip(predictions, gold)) / len(records),
        "calibrated_accuracy": sum(p == g for p, g in zip(calibrated, gold)) / len(records),
        "questions": len(records), "majority_class": majority, "majority_baseline": majority_n / len(records),
        "predicted": dict(Counter(predictions)), "calibrated_predicted": dict(Counter(calibrated)),
        "content_free_scores": dict(zip(ANSWERS, prior)),
        "confusion": {g: dict(Counter(p for p, gg in zip(predictions, gold) if gg == g)) for g in ANSWERS},
    }


# --- fill-in-the-blank --------------------------------------------------------------------------------------

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


# --- completions ---------------------------------------------------------------------------------------------

@torch.no_grad()
def complete(model, tokenizer, prompt: str, max_new_tokens: int, repetition_penalty: float, start: bool = True) -> str:
    """Greedy continuation of ``prompt`` (after the start-of-document token unless ``start`` is False)."""
    ids = torch.tensor([(start_ids(tokenizer) if start else []) + encode(tokenizer, prompt)], device=_device(model))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, repetition_penalty=repetition_penalty,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

"""PubMedQA zero-shot: the prompt is the abstract, the question and a fixed instruction; the prediction is the
answer among " yes", " no", " maybe" with the highest total log-likelihood, reported raw and after contextual
calibration (minus the scores for a content-free question)."""

from __future__ import annotations

from collections import Counter

import torch

from lmlab.data.documents import QARecord
from lmlab.pretrained.domain_data import encode, start_ids
from lmlab.pretrained.likelihood import continuation_logprobs, model_device

ANSWERS = ("yes", "no", "maybe")
PUBMEDQA_INSTRUCTION = "Answer the question with yes, no or maybe."


def pubmedqa_prompt_ids(tokenizer, record: QARecord, max_tokens: int) -> list[int]:
    head = encode(tokenizer, "Abstract: ")
    tail = encode(tokenizer, f"\nQuestion: {record.question}\n{PUBMEDQA_INSTRUCTION}\nAnswer:")
    context = encode(tokenizer, record.context)
    room = max(0, max_tokens - len(head) - len(tail) - 1)
    context = context[len(context) - room:] if room else []  # keep the end: results sit next to the question
    return start_ids(tokenizer) + head + context + tail


@torch.no_grad()
def answer_scores(model, tokenizer, record: QARecord, max_tokens: int) -> list[float]:
    """log P(" yes" | prompt), log P(" no" | prompt), log P(" maybe" | prompt)."""
    answers = [encode(tokenizer, f" {a}") for a in ANSWERS]
    prompt = pubmedqa_prompt_ids(tokenizer, record, max_tokens)
    if all(len(a) == 1 for a in answers):  # one forward pass serves all three answers
        x = torch.tensor(prompt, device=model_device(model))[None]
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

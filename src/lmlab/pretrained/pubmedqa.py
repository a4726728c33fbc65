"""PubMedQA (PQA-L), scored as lm-evaluation-harness's ``pubmedqa`` task does, and a second, instructed variant.

``lm-eval`` (the headline): the prompt is ``"Abstract: {contexts joined by \\n}\\nQuestion: {question}\\nAnswer:"``;
each of the continuations ``" yes"``, ``" no"``, ``" maybe"`` is scored by its summed log-likelihood and the
highest wins. As in lm-eval, no start token is added unless the tokenizer adds one itself (Gemma's BOS).
Few-shot: k examples drawn from the *training* questions (never a test id) with a seeded generator, a new draw
per question, each written as its prompt plus ``" " + answer`` and joined by a blank line, as lm-eval does.
To keep CPU cost bounded, an abstract is cut from its start (its end, next to the question, is kept) to
``max_prompt_tokens`` for the question and ``shot_tokens`` for each example.

``instructed``: the abstract, the question and the instruction "Answer the question with yes, no or maybe.",
also reported after contextual calibration (Zhao et al., 2021: each verdict's score minus its score for a
content-free question). It answers with a constant prior for small models; kept as a named variant only.
"""

from __future__ import annotations

import random
from collections import Counter

import torch
from tqdm import tqdm

from lmlab.data.documents import QARecord
from lmlab.metrics.bootstrap import classification_report
from lmlab.pretrained.domain_data import bos_ids, encode, start_ids
from lmlab.pretrained.likelihood import continuation_logprobs, model_device

ANSWERS = ("yes", "no", "maybe")
VARIANTS = ("lm-eval", "instructed")
PUBMEDQA_INSTRUCTION = "Answer the question with yes, no or maybe."
# A question with no content: its answer scores are the model's prior over the verdicts in this prompt.
CONTENT_FREE = QARecord("content-free", "N/A", "N/A", "", "", ("N/A",))
PAPER_MAJORITY = 0.552  # PubMedQA paper (Jin et al., 2019): majority class over all 1,000 PQA-L questions


def lm_eval_text(record: QARecord) -> str:
    """lm-eval's ``doc_to_text`` for pubmedqa."""
    return "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(record.contexts), record.question)


def lm_eval_prompt_ids(tokenizer, record: QARecord, max_tokens: int, shots: list[QARecord] = (),
                       shot_tokens: int = 0) -> list[int]:
    """The whole context as one string, encoded once as lm-eval does (BOS first only where the tokenizer adds
    one): the examples, each ``text + " " + answer``, then the question, joined by blank lines."""
    parts = [f"{_fitted_text(tokenizer, s, shot_tokens)} {s.decision}" for s in shots]
    return bos_ids(tokenizer) + encode(tokenizer, "\n\n".join([*parts, _fitted_text(tokenizer, record, max_tokens)]))


def _fitted_text(tokenizer, record: QARecord, max_tokens: int) -> str:
    """lm-eval's text of ``record`` in at most ``max_tokens`` tokens: the abstract is cut from its start (its
    end, next to the question, is kept)."""
    text = lm_eval_text(record)
    if len(encode(tokenizer, text)) <= max_tokens:
        return text
    frame = len(encode(tokenizer, lm_eval_text(QARecord("", record.question, "", "", "", ("",)))))
    abstract = encode(tokenizer, "\n".join(record.contexts))
    room = max(0, max_tokens - frame - 2)  # 2 tokens of slack for re-tokenisation at the cut
    while True:
        kept = tokenizer.decode(abstract[len(abstract) - room:]) if room else ""
        text = "Abstract: {}\nQuestion: {}\nAnswer:".format(kept.lstrip(), record.question)
        if len(encode(tokenizer, text)) <= max_tokens or room == 0:
            return text
        room -= 1


def instructed_prompt_ids(tokenizer, record: QARecord, max_tokens: int) -> list[int]:
    head = encode(tokenizer, "Abstract: ")
    tail = encode(tokenizer, f"\nQuestion: {record.question}\n{PUBMEDQA_INSTRUCTION}\nAnswer:")
    context = encode(tokenizer, record.context)
    room = max(0, max_tokens - len(head) - len(tail) - 1)
    context = context[len(context) - room:] if room else []  # keep the end: results sit next to the question
    return start_ids(tokenizer) + head + context + tail


@torch.no_grad()
def answer_scores(model, tokenizer, prompt: list[int]) -> list[float]:
    """log P(" yes" | prompt), log P(" no" | prompt), log P(" maybe" | prompt), each summed over its tokens."""
    answers = [encode(tokenizer, f" {a}") for a in ANSWERS]
    if all(len(a) == 1 for a in answers):  # one forward pass serves all three answers
        x = torch.tensor(prompt, device=model_device(model))[None]
        # only the last position's logits: Gemma's 262k-word head would cost more than the model otherwise
        logp = model(input_ids=x, logits_to_keep=1).logits[0, -1].float().log_softmax(-1)
        return [logp[a[0]].item() for a in answers]
    return continuation_logprobs(model, prompt, answers)


def _best(scores: list[float]) -> str:
    return ANSWERS[max(range(3), key=scores.__getitem__)]


@torch.no_grad()
def evaluate(model, tokenizer, records: list[QARecord], variant: str = "lm-eval", shots: int = 0,
             shot_pool: list[QARecord] = (), max_tokens: int = 512, shot_tokens: int = 256, seed: int = 0,
             resamples: int = 1000) -> dict:
    """Scores of one variant and shot count on ``records``: accuracy and macro-F1 with 95% bootstrap intervals,
    the verdict distribution, the confusion matrix and the majority baseline on the same questions."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown PubMedQA variant '{variant}': choose one of {', '.join(VARIANTS)}")
    rng = random.Random(seed)
    predictions, calibrated = [], []
    prior = answer_scores(model, tokenizer, instructed_prompt_ids(tokenizer, CONTENT_FREE, max_tokens)) \
        if variant == "instructed" else None
    for r in tqdm(records, desc=f"PubMedQA {variant} {shots}-shot", unit="q", leave=False, disable=len(records) < 50):
        if variant == "lm-eval":
            examples = rng.sample(list(shot_pool), shots) if shots else []
            scores = answer_scores(model, tokenizer, lm_eval_prompt_ids(tokenizer, r, max_tokens, examples, shot_tokens))
        else:
            scores = answer_scores(model, tokenizer, instructed_prompt_ids(tokenizer, r, max_tokens))
            calibrated.append(_best([s - p for s, p in zip(scores, prior)]))
        predictions.append(_best(scores))
    gold = [r.decision for r in records]
    out = dict(classification_report(gold, predictions, ANSWERS, resamples, seed), variant=variant, shots=shots,
               paper_majority_all_1000=PAPER_MAJORITY,
               answers={r.id: p for r, p in zip(records, predictions)})  # per question: paired comparisons later
    if variant == "instructed":
        out.update(calibrated_accuracy=sum(p == g for p, g in zip(calibrated, gold)) / len(gold),
                   calibrated_predicted=dict(Counter(calibrated)), content_free_scores=dict(zip(ANSWERS, prior)))
    return out

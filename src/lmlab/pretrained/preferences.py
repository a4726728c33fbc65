"""Preference pairs for DPO, and the measurements that say what alignment changed.

Pair sources (each split into train and a held-out evaluation part by a hash of the prompt):
- ``general``: ``preferences/dpo_en_demo.json`` (300 conversations with a chosen and a rejected reply),
  flattened with the model's chat template (``add_generation_prompt``); a third held out (about 100 pairs).
- ``pubmedqa``: PubMedQA's non-test questions only (train split for training, valid split held out; the 500
  official test ids are never used). Prompt = the abstract (cut from the front to ``context_tokens``) and the
  question; chosen = the expert long answer followed by "So the answer is <correct decision>."; rejected = the
  same long answer followed by a wrong decision (the next one of yes -> no -> maybe -> yes). The two replies
  differ only in the decision, so the preference teaches consistency between the evidence and the verdict.
- ``pubmed-spin``: PubMed abstracts, chosen = the real last sentence, rejected = the starting model's own
  sample (lmlab.pretrained.spin; made in lmlab.recipes.dpo, which holds the model).
- ``jsonl:PATH``: one object a line with string fields ``prompt``, ``chosen``, ``rejected``; 10% held out.

Replies end with the tokenizer's EOS, as TRL does, so our scores and TRL's see the same tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.data import corpora, user_files
from lmlab.errors import LmlabError
from lmlab.metrics.bootstrap import bootstrap_mean_ci
from lmlab.pretrained.domain_data import bucket, encode, pubmedqa_records

SOURCES = "general, pubmedqa, pubmed-spin, jsonl:PATH"
WRONG = {"yes": "no", "no": "maybe", "maybe": "yes"}


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


def chat_prompt(tokenizer, turns: list[dict]) -> str:
    """A conversation up to the assistant's turn, in the model's chat template (or a plain layout without one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return "".join(f"{t['role'].capitalize()}: {t['content']}\n\n" for t in turns) + "Assistant:"


def load_pairs(source: str, tokenizer, context_tokens: int = 300, max_length: int = 0) -> dict[str, list[Pair]]:
    """Train and held-out pairs; with ``max_length``, every pair is cut to fit it (see :func:`fit`)."""
    pairs = _load_pairs(source, tokenizer, context_tokens)
    if max_length:
        pairs = {split: [fit(p, tokenizer, max_length) for p in ps] for split, ps in pairs.items()}
    return pairs


def fit(pair: Pair, tokenizer, max_length: int, margin: int = 8) -> Pair:
    """Cut a pair so prompt + the longer reply fits ``max_length`` tokens, the same way for training and for
    the measurements: a prompt longer than half the budget keeps its last half-budget tokens (the end of the
    conversation, next to the reply); then each reply keeps its first tokens that fit. ``margin`` tokens are
    left for re-tokenisation at the cut points."""
    budget = max_length - margin
    prompt_ids = encode(tokenizer, pair.prompt)
    prompt = pair.prompt
    if len(prompt_ids) > budget // 2 and len(prompt_ids) + max(len(encode(tokenizer, pair.chosen)),
                                                               len(encode(tokenizer, pair.rejected))) > budget:
        prompt_ids = prompt_ids[-(budget // 2):]
        prompt = tokenizer.decode(prompt_ids)
    room = budget - len(prompt_ids)

    def cut(reply: str) -> str:
        ids = encode(tokenizer, reply)
        return reply if len(ids) <= room else tokenizer.decode(ids[:room])

    chosen, rejected = cut(pair.chosen), cut(pair.rejected)
    if chosen == rejected:  # the replies differed only after the cut: keep their different ends instead
        chosen, rejected = pair.chosen, pair.rejected
    return Pair(prompt, chosen, rejected)


def _load_pairs(source: str, tokenizer, context_tokens: int) -> dict[str, list[Pair]]:
    name, _, arg = source.partition(":")
    if name == "general":
        pairs = _general(tokenizer)
        held = 1 / 3  # only 300 pairs exist: about 100 held out, so the interval is as narrow as it can be
    elif name == "pubmedqa":
        records = pubmedqa_records()
        return {"train": [_pubmedqa_pair(tokenizer, r, context_tokens) for r in records["train"]],
                "eval": [_pubmedqa_pair(tokenizer, r, context_tokens) for r in records["valid"]]}
    elif name == "jsonl":
        pairs = _jsonl(Path(arg).expanduser(), tokenizer)
        held = 0.1
    else:
        raise LmlabError(f"unknown pair source '{source}': use one of {SOURCES}")
    out = {"train": [], "eval": []}
    for p in pairs:
        out["eval" if bucket(p.prompt) < held else "train"].append(p)
    if not out["train"] or not out["eval"]:
        raise LmlabError(f"{source} gives {len(out['train'])} training and {len(out['eval'])} held-out pairs: "
                         "at least one of each is needed (add pairs)")
    return out


def _eos(tokenizer, text: str) -> str:
    return text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token


def _general(tokenizer) -> list[Pair]:
    rows = json.loads(corpora.split_path("preferences", "all").read_text(encoding="utf-8"))
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    pairs = []
    for row in rows:
        turns = [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]
        chosen, rejected = row["chosen"]["value"].strip(), row["rejected"]["value"].strip()
        if chosen != rejected:
            pairs.append(Pair(chat_prompt(tokenizer, turns), _eos(tokenizer, chosen), _eos(tokenizer, rejected)))
    return pairs


def _pubmedqa_pair(tokenizer, record, context_tokens: int) -> Pair:
    ids = encode(tokenizer, record.context)
    context = tokenizer.decode(ids[-context_tokens:]) if len(ids) > context_tokens else record.context
    question = (f"Abstract: {context}\n\nQuestion: {record.question}\n"
                "Explain briefly, then answer yes, no or maybe.")
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": question}])
    reply = record.long_answer.strip()
    return Pair(prompt, _eos(tokenizer, f"{reply} So the answer is {record.decision}."),
                _eos(tokenizer, f"{reply} So the answer is {WRONG[record.decision]}."))


def check_source(source: str) -> None:
    """Fail on a bad pair source (unknown name, malformed pair file) before any model is loaded."""
    name, _, arg = source.partition(":")
    if name == "jsonl":
        _jsonl_rows(Path(arg).expanduser())
    elif name not in ("general", "pubmedqa", "pubmed-spin"):
        raise LmlabError(f"unknown pair source '{source}': use one of {SOURCES}")


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    for n, row in user_files.read_jsonl(path, "pair file"):
        if not all(isinstance(row.get(k), str) and row[k].strip() for k in ("prompt", "chosen", "rejected")):
            raise LmlabError(f"{path}:{n} needs non-empty string fields 'prompt', 'chosen' and 'rejected'")
        if row["chosen"].strip() == row["rejected"].strip():
            raise LmlabError(f"{path}:{n} has the same chosen and rejected reply: a pair must differ")
        rows.append(row)
    return rows


def _jsonl(path: Path, tokenizer) -> list[Pair]:
    return [Pair(r["prompt"], _eos(tokenizer, r["chosen"]), _eos(tokenizer, r["rejected"])) for r in _jsonl_rows(path)]


# --- measurements ----------------------------------------------------------------------------------------------

def _split_ids(tokenizer, prompt: str, reply: str, max_length: int) -> tuple[list[int], list[int]]:
    """Prompt and reply ids as TRL makes them: tokenise prompt and prompt+reply, split where they diverge."""
    p = encode(tokenizer, prompt)
    full = encode(tokenizer, prompt + reply)
    k = 0
    while k < min(len(p), len(full)) and p[k] == full[k]:
        k += 1
    prompt_ids, reply_ids = full[:k], full[k:]
    if len(prompt_ids) + len(reply_ids) > max_length:
        # cut the prompt from the front (keeping at least its last 16 tokens), then the reply from the end
        keep = max(min(len(prompt_ids), 16), max_length - len(reply_ids))
        prompt_ids = prompt_ids[len(prompt_ids) - keep:]
        reply_ids = reply_ids[: max_length - keep]
    return prompt_ids, reply_ids


@torch.no_grad()
def reply_logps(model, tokenizer, pairs: list[Pair], max_length: int, reference=None) -> list[dict]:
    """Summed log-probabilities of the chosen and rejected reply of every pair, and their token counts.
    With ``reference``, each row also holds ``chosen_kl``: KL(model || reference) of the next-token
    distributions summed over the chosen reply (teacher-forced, so both models see the same contexts),
    computed in the same pass so the model is not run twice."""
    device = next(model.parameters()).device
    out = []
    for pair in pairs:
        row = {}
        for side in ("chosen", "rejected"):
            prompt_ids, reply_ids = _split_ids(tokenizer, pair.prompt, getattr(pair, side), max_length)
            x = torch.tensor([prompt_ids + reply_ids], device=device)
            span = slice(len(prompt_ids) - 1, x.shape[1] - 1)
            logp = model(input_ids=x).logits[0, span].float().log_softmax(-1)
            row[side] = logp.gather(1, x[0, len(prompt_ids):, None]).sum().item()
            row[f"{side}_tokens"] = len(reply_ids)
            if reference is not None and side == "chosen":
                ref = reference(input_ids=x).logits[0, span].float().log_softmax(-1)
                row["chosen_kl"] = (logp.exp() * (logp - ref)).sum().item()
        out.append(row)
    return out


@torch.no_grad()
def sampled_kl(policy, reference, tokenizer, prompts: list[str], max_new_tokens: int, seed: int = 0) -> dict:
    """KL(policy || reference) on the policy's **own samples**, the quantity DPO trades against reward: for each
    prompt one reply is sampled from the policy (temperature 1, no truncation, so the samples follow the policy
    exactly); along it, ``mc`` sums log pi(y_t) - log pi_ref(y_t) over the sampled tokens (the Monte-Carlo
    estimate of the sequence KL) and ``exact`` sums the full next-token KL at every sampled position (the same
    expectation, with less variance). Both are reported per sampled token, with the number of tokens."""
    device = next(policy.parameters()).device
    mc = exact = 0.0
    tokens = 0
    for i, prompt in enumerate(prompts):
        torch.manual_seed(seed + i)
        x = torch.tensor([encode(tokenizer, prompt)], device=device)
        out = policy.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0,
                              top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        reply = out[0, x.shape[1]:]
        if tokenizer.eos_token_id in reply.tolist():  # the sample ends at its first EOS, which it includes
            reply = reply[: reply.tolist().index(tokenizer.eos_token_id) + 1]
        if not len(reply):
            continue
        seq = torch.cat([x[0], reply])[None]
        span = slice(x.shape[1] - 1, seq.shape[1] - 1)
        logp = policy(input_ids=seq).logits[0, span].float().log_softmax(-1)
        ref = reference(input_ids=seq).logits[0, span].float().log_softmax(-1)
        picked = reply[:, None]
        mc += (logp.gather(1, picked) - ref.gather(1, picked)).sum().item()
        exact += (logp.exp() * (logp - ref)).sum().item()
        tokens += len(reply)
    return {"mc": mc / max(1, tokens), "exact": exact / max(1, tokens), "tokens": tokens, "samples": len(prompts)}


def _won(x: float) -> float:
    """1 for a positive margin, 0 for a negative one, 0.5 for a tie: before training every implicit reward is
    exactly 0, and counting those ties as losses would read as an accuracy of 0.000, a change that is none."""
    return 1.0 if x > 0 else 0.0 if x < 0 else 0.5


def pair_scores(policy: list[dict], reference: list[dict], beta: float) -> dict[str, list[float]]:
    """Per held-out pair: preference (summed and per-token log-likelihood), log-likelihood margin, and DPO's
    implicit reward r = beta * ((log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected)): won and margin."""
    margins = [p["chosen"] - p["rejected"] for p in policy]
    per_token = [p["chosen"] / p["chosen_tokens"] - p["rejected"] / p["rejected_tokens"] for p in policy]
    rewards = [beta * ((p["chosen"] - r["chosen"]) - (p["rejected"] - r["rejected"])) for p, r in zip(policy, reference)]
    return {"preference_acc": [_won(m) for m in margins], "preference_acc_normalized": [_won(m) for m in per_token],
            "logp_margin": margins, "reward_acc": [_won(r) for r in rewards], "reward_margin": rewards}


def preference_metrics(policy: list[dict], reference: list[dict], beta: float, resamples: int = 1000,
                       seed: int = 0) -> dict:
    """Means of :func:`pair_scores` with 95% bootstrap intervals over the pairs (``ci95``), the number of tied
    implicit rewards (``reward_ties``: all of them when policy = reference, whose reward accuracy is then 0.5 by
    the tie rule), mean log-likelihoods, and the mean per-token KL from the reference over the chosen replies
    (0 for rows scored without one, i.e. the reference itself)."""
    n = len(policy)
    scores = pair_scores(policy, reference, beta)
    out = {"pairs": n, **{k: sum(v) / n for k, v in scores.items()},
           "ci95": {k: bootstrap_mean_ci(v, resamples, seed) for k, v in scores.items()},
           "reward_ties": sum(x == 0.5 for x in scores["reward_acc"]),
           "logp_chosen": sum(p["chosen"] for p in policy) / n,
           "logp_rejected": sum(p["rejected"] for p in policy) / n,
           "kl_from_reference": sum(p.get("chosen_kl", 0.0) for p in policy) / max(1, sum(p["chosen_tokens"] for p in policy))}
    return out


def paired_change(before: dict[str, list[float]], after: dict[str, list[float]], resamples: int = 1000,
                  seed: int = 0) -> dict[str, dict]:
    """After minus before for every pair score, with a paired 95% bootstrap interval (the same pairs resampled
    for both), so a change is a finding only when its interval excludes 0."""
    return {k: {"change": sum(a - b for a, b in zip(after[k], before[k])) / len(before[k]),
                "ci95": bootstrap_mean_ci([a - b for a, b in zip(after[k], before[k])], resamples, seed)}
            for k in before}

"""Training examples for the fine-tuning loop: tensors of ids, labels (-100 = not a target) and attention masks.

Two kinds: packed chunks of a domain corpus (every token a target: language modelling), and PubMedQA verdict
examples (task fine-tuning: lm-eval's prompt followed by the verdict; only the verdict, and optionally the
expert's long answer, are targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.data.documents import QARecord
from lmlab.errors import LmlabError
from lmlab.pretrained.domain_data import encode, separator_id
from lmlab.pretrained.pubmedqa import lm_eval_prompt_ids

IGNORE = -100  # transformers' ignore index for labels


@dataclass
class Examples:
    input_ids: torch.Tensor  # (N, L)
    labels: torch.Tensor  # (N, L), IGNORE where a token is context or padding
    attention_mask: torch.Tensor  # (N, L)
    weights: torch.Tensor  # (N,) how much each row counts in a mean loss: its number of targets

    def __len__(self) -> int:
        return self.input_ids.size(0)

    def batch(self, rows: torch.Tensor, device) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[rows].to(device), "labels": self.labels[rows].to(device),
                "attention_mask": self.attention_mask[rows].to(device)}

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def packed(chunks: torch.Tensor) -> Examples:
    """Language modelling on packed chunks: every token is a target, rows weigh the same (equal targets)."""
    return Examples(chunks, chunks, torch.ones_like(chunks), torch.ones(len(chunks), dtype=torch.long))


def verdict_examples(records: list[QARecord], tokenizer, seq_len: int, long_answer: bool = False) -> Examples:
    """Each question as lm-eval prompts it (abstract cut from its start to fit ``seq_len``), then " yes"/" no"/
    " maybe" as the target; with ``long_answer`` the expert's long answer and an end-of-text follow as targets
    too. Right-padded to the longest example."""
    end = separator_id(tokenizer)
    rows = []
    for r in records:
        answer = encode(tokenizer, f" {r.decision}")
        extra = encode(tokenizer, f". {r.long_answer}")[: seq_len // 4] + [end] if long_answer else []
        prompt = lm_eval_prompt_ids(tokenizer, r, seq_len - len(answer) - len(extra))
        rows.append((prompt + answer + extra, [IGNORE] * len(prompt) + answer + extra))
    if not rows:
        raise LmlabError("no PubMedQA questions to build task examples from: check the pubmedqa corpus")
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), end, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)], labels[i, : len(lab)], mask[i, : len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
    return Examples(input_ids, labels, mask, (labels != IGNORE).sum(1))

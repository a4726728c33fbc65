"""lmlab rl: the verdict reward, the prompts (training ids only), and one GRPO step that raises the likelihood
of the completions its reward favoured."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from lmlab.cli import main
from lmlab.pretrained.domain_data import pubmedqa_records
from lmlab.recipes import rl
from tests.conftest import gpt2_tokenizer


def test_verdict_reward_reads_the_first_word():
    assert rl.verdict_reward([" yes, because", " No.", "maybe", " the answer is yes", ""],
                             ["yes", "no", "no", "yes", "yes"]) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_prompts_are_training_questions_in_lm_eval_format(domain_data):
    cfg = rl.configure(None, "smoke", ["data.train_questions=0"])
    data = rl.prompts(cfg, gpt2_tokenizer())
    test_questions = {r.question for r in pubmedqa_records()["test"]}
    assert len(data) == len(pubmedqa_records()["train"]) == 437
    assert all(d["prompt"].endswith("Answer:") and d["decision"] in ("yes", "no", "maybe") for d in data)
    assert not any(q in d["prompt"] for d in data for q in test_questions)


def test_one_grpo_step_raises_the_likelihood_of_rewarded_completions(domain_data, tiny_gpt2, tmp_path, monkeypatch):
    tok = gpt2_tokenizer()
    tok.pad_token = tok.eos_token
    policy = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    seen = []

    def reward(prompts, completions, completion_ids, **_):  # favour completions whose first token id is even
        scores = [1.0 if ids[0] % 2 == 0 else 0.0 for ids in completion_ids]
        seen.extend(zip(prompts, completion_ids, scores))
        return scores

    monkeypatch.setattr(rl, "verdict_reward", reward)
    cfg = rl.configure(None, "smoke", ["train.steps=1", "train.batch_size=8", "grpo.num_generations=4",
                                       "grpo.beta=0.0", "lora.enabled=false", "train.lr=0.02", "train.warmup_steps=0",
                                       "grpo.max_completion_tokens=1"])
    trainer = rl._trainer(cfg, policy, tok, rl.prompts(cfg, tok)[:2], tmp_path)

    def logp(model):
        with torch.no_grad():
            out = []
            for prompt, ids, _ in seen:
                x = torch.tensor([tok(prompt).input_ids + list(ids)])
                lp = model(input_ids=x).logits[0, -2].log_softmax(-1)[ids[0]]
                out.append(float(lp))
            return out

    reference = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    trainer.train()
    assert seen and {s for *_, s in seen} == {0.0, 1.0}  # both kinds were sampled
    before, after = logp(reference), logp(trainer.model.eval())
    up = [a - b for a, b, (*_, s) in zip(after, before, seen) if s == 1.0]
    down = [a - b for a, b, (*_, s) in zip(after, before, seen) if s == 0.0]
    assert sum(up) / len(up) > 0 > sum(down) / len(down)


def test_rl_cli_end_to_end_writes_before_and_after(domain_data, tiny_llama, tmp_path):
    out = tmp_path / "rl"
    assert main(["rl", "--model", str(tiny_llama), "--preset", "smoke", "--out", str(out), "--threads", "1"]) == 0
    before, after = (json.loads((out / f).read_text()) for f in ("before.json", "after.json"))
    for r in (before, after):
        assert r["pubmedqa_settings"]["lm-eval 0-shot"]["questions"] == 4
    assert after["steps"] == 2 and (out / "model" / "config.json").is_file() and (out / "curves.png").is_file()
    assert main(["rl", "--model", str(tiny_llama), "--preset", "smoke", "--out", str(out)]) == 2  # never overwritten

"""DPO: pair construction, the measurements by hand, one TRL step on a tiny model, and bad pair files."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from lmlab.errors import LmlabError
from lmlab.pretrained import preferences
from lmlab.pretrained.domain_data import pubmedqa_records
from lmlab.recipes import dpo
from tests.conftest import gpt2_tokenizer


def test_pubmedqa_pairs_use_no_test_question_and_differ_only_in_the_decision(domain_data):
    tok = gpt2_tokenizer()
    pairs = preferences.load_pairs("pubmedqa", tok, context_tokens=64)
    test_questions = {r.question for r in pubmedqa_records()["test"]}
    everything = pairs["train"] + pairs["eval"]
    assert len(pairs["train"]) + len(pairs["eval"]) == 500
    assert not any(q in p.prompt for p in everything for q in test_questions)
    for p in everything:
        assert p.chosen != p.rejected and p.chosen.endswith(tok.eos_token)
        head_c, _, verdict_c = p.chosen.rpartition("So the answer is ")
        head_r, _, verdict_r = p.rejected.rpartition("So the answer is ")
        assert head_c == head_r and verdict_c != verdict_r


def test_general_pairs_hold_out_a_third_and_use_the_chat_layout(domain_data):
    pairs = preferences.load_pairs("general", gpt2_tokenizer())
    assert len(pairs["train"]) + len(pairs["eval"]) <= 300 and 80 <= len(pairs["eval"]) <= 120
    assert not {p.prompt for p in pairs["train"]} & {p.prompt for p in pairs["eval"]}
    assert all(p.prompt.startswith(("User: ", "System: ")) and p.prompt.endswith("Assistant:") for p in pairs["eval"])


def test_preference_accuracy_and_implicit_reward_by_hand():
    policy = [{"chosen": -10.0, "rejected": -12.0, "chosen_tokens": 10, "rejected_tokens": 4},
              {"chosen": -9.0, "rejected": -6.0, "chosen_tokens": 3, "rejected_tokens": 6}]
    reference = [{"chosen": -11.0, "rejected": -11.0, "chosen_tokens": 10, "rejected_tokens": 4},
                 {"chosen": -9.5, "rejected": -5.0, "chosen_tokens": 3, "rejected_tokens": 6}]
    m = preferences.preference_metrics(policy, reference, beta=0.5)
    assert m["preference_acc"] == 0.5  # -10 > -12 yes; -9 > -6 no
    assert m["preference_acc_normalized"] == 0.5  # -1.0 > -3.0 yes; -3.0 > -1.0 no
    assert m["logp_margin"] == pytest.approx((2.0 - 3.0) / 2)
    # rewards: 0.5*((−10+11) − (−12+11)) = 1.0 ; 0.5*((−9+9.5) − (−6+5)) = 0.75
    assert m["reward_acc"] == 1.0 and m["reward_margin"] == pytest.approx((1.0 + 0.75) / 2)
    same = preferences.preference_metrics(policy, policy, beta=0.5)
    # the policy is its own reference: every implicit reward is a tie, counted 0.5 (never 0.000, a false "loss")
    assert same["reward_margin"] == 0.0 and same["reward_acc"] == 0.5 and same["kl_from_reference"] == 0.0
    assert same["reward_ties"] == 2 and same["ci95"]["reward_acc"] == (0.5, 0.5)
    with_kl = [dict(policy[0], chosen_kl=2.6), dict(policy[1], chosen_kl=0.3)]
    assert preferences.preference_metrics(with_kl, reference, 0.5)["kl_from_reference"] == pytest.approx(2.9 / 13)


def _dpo_loss(model, tok, pairs, ref, beta):
    logps = preferences.reply_logps(model, tok, pairs, max_length=128)
    delta = torch.tensor([(p["chosen"] - r["chosen"]) - (p["rejected"] - r["rejected"]) for p, r in zip(logps, ref)])
    return -F.logsigmoid(beta * delta).mean().item()


def test_one_trl_dpo_step_lowers_the_loss_on_its_batch(tiny_llama, tmp_path):
    tok = gpt2_tokenizer()
    pairs = [preferences.Pair("User: Is the sky blue?\n\nAssistant:", " Yes, it is blue." + tok.eos_token,
                              " No, it is green." + tok.eos_token),
             preferences.Pair("User: Do cats bark?\n\nAssistant:", " No, cats meow." + tok.eos_token,
                              " Yes, cats bark loudly." + tok.eos_token)]
    cfg = dpo.configure(str(tiny_llama), None, "smoke", ["train.steps=1", "train.batch_size=2", "train.lr=1e-2",
                                                         "train.warmup_steps=0", "dpo.max_length=128"])
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama)
    reference = preferences.reply_logps(policy, tok, pairs, max_length=128)
    before = _dpo_loss(policy, tok, pairs, reference, cfg.dpo.beta)
    assert before == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    trainer = dpo._trainer(cfg, policy, tok, pairs, tmp_path)
    trainer.train()
    after = _dpo_loss(trainer.model.eval(), tok, pairs, reference, cfg.dpo.beta)
    assert after < before - 1e-3
    start = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    rows = preferences.reply_logps(trainer.model, tok, pairs, max_length=128, reference=start)
    assert all(r["chosen_kl"] > 0 for r in rows)  # the step moved the policy away from the reference
    assert all(r["chosen_kl"] == pytest.approx(0, abs=1e-6)
               for r in preferences.reply_logps(start, tok, pairs, max_length=128, reference=start))


def test_malformed_pair_files_are_one_line_errors(tmp_path):
    tok = gpt2_tokenizer()
    cases = {
        "notjson.jsonl": ("{oops", "is not a JSON object"),
        "missing.jsonl": (json.dumps({"prompt": "p", "chosen": "c"}), "needs non-empty string fields"),
        "same.jsonl": (json.dumps({"prompt": "p", "chosen": "c", "rejected": " c "}), "same chosen and rejected"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content + "\n")
        with pytest.raises(LmlabError, match=message):
            preferences.load_pairs(f"jsonl:{tmp_path / name}", tok)
    with pytest.raises(LmlabError, match="not found"):
        preferences.load_pairs(f"jsonl:{tmp_path / 'absent.jsonl'}", tok)
    with pytest.raises(LmlabError, match="unknown pair source"):
        preferences.load_pairs("hh-rlhf", tok)
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"prompt": f"q{i}", "chosen": "good", "rejected": "bad"}) for i in range(40)))
    split = preferences.load_pairs(f"jsonl:{good}", tok)
    assert len(split["train"]) + len(split["eval"]) == 40 and split["eval"]


def test_long_pairs_are_cut_to_fit_keeping_the_end_of_the_prompt():
    from lmlab.pretrained.domain_data import encode

    tok = gpt2_tokenizer()
    long = preferences.Pair("User: " + "tell me more about kidneys. " * 80 + "Last question?\n\nAssistant:",
                            " Yes. " + "The kidney filters blood. " * 60, " No. " + "The heart pumps blood. " * 60)
    cut = preferences.fit(long, tok, max_length=128)
    for reply in (cut.chosen, cut.rejected):
        assert len(encode(tok, cut.prompt + reply)) <= 128
    assert cut.prompt.endswith("Last question?\n\nAssistant:") and cut.chosen.startswith(" Yes.")
    assert cut.chosen != cut.rejected
    short = preferences.Pair("User: hi\n\nAssistant:", " Hello.", " Go away.")
    assert preferences.fit(short, tok, max_length=128) == short


def test_paired_change_has_an_interval_that_tells_a_change_from_noise():
    import random

    rng = random.Random(0)
    n = 300
    before = {"preference_acc": [float(rng.random() < 0.5) for _ in range(n)]}
    flipped = [1.0 if rng.random() < 0.3 else x for x in before["preference_acc"]]  # 30% of pairs pushed to "won"
    change = preferences.paired_change(before, {"preference_acc": flipped}, resamples=500)["preference_acc"]
    assert change["change"] == pytest.approx(sum(a - b for a, b in zip(flipped, before["preference_acc"])) / n)
    low, high = change["ci95"]
    assert 0 < low < change["change"] < high  # a real change: the interval excludes 0
    none = preferences.paired_change(before, before, resamples=200)["preference_acc"]
    assert none == {"change": 0.0, "ci95": (0.0, 0.0)}
    m = preferences.preference_metrics(
        [{"chosen": -1.0, "rejected": -2.0, "chosen_tokens": 1, "rejected_tokens": 1}] * 3
        + [{"chosen": -2.0, "rejected": -1.0, "chosen_tokens": 1, "rejected_tokens": 1}],
        [{"chosen": -1.0, "rejected": -1.0, "chosen_tokens": 1, "rejected_tokens": 1}] * 4, beta=1.0, resamples=400)
    low, high = m["ci95"]["preference_acc"]
    assert m["preference_acc"] == 0.75 and 0 <= low <= 0.75 <= high <= 1


def test_spin_conclusion_split_takes_the_last_sentence():
    from lmlab.pretrained.spin import first_sentence, split_conclusion

    text = "A title\nWe studied mice. Results were clear (n = 12). Thus the drug reduced blood pressure in all mice."
    assert split_conclusion(text) == ("A title\nWe studied mice. Results were clear (n = 12).",
                                      "Thus the drug reduced blood pressure in all mice.")
    assert split_conclusion("T\nOne sentence. Two sentences here.") is None  # fewer than three
    assert first_sentence(" It worked well. And then more") == "It worked well."


def test_spin_pairs_keep_every_abstract_on_one_side(domain_data, tiny_gpt2, tmp_path):
    from lmlab.pretrained import spin
    from lmlab.pretrained.domain_data import load_domain

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval(), gpt2_tokenizer()
    tok.pad_token = tok.eos_token
    made = {split: spin.spin_pairs(model, tok, split, 5, 48, 8, seed=0, batch=4, cache=tmp_path / f"{split}.jsonl")
            for split in ("train", "valid")}
    assert all(len(ps) == 5 for ps in made.values())
    assert not {p.prompt for p in made["train"]} & {p.prompt for p in made["valid"]}
    domain = load_domain("pubmed")
    for split, pairs in made.items():
        conclusions = {c for d in getattr(domain, split) if (c := spin.split_conclusion(d.text))}
        endings = {real for _, real in conclusions}
        for p in pairs:  # chosen = the abstract's own last sentence, from this split's abstracts only
            assert p.chosen.removeprefix(" ").removesuffix(tok.eos_token) in endings
            assert p.rejected != p.chosen and p.rejected.endswith(tok.eos_token)
    other = {real for d in domain.valid if (c := spin.split_conclusion(d.text)) for _, real in [c]}
    assert not any(p.chosen.strip().removesuffix(tok.eos_token) in other for p in made["train"])
    again = spin.spin_pairs(None, tok, "train", 5, 48, 8, cache=tmp_path / "train.jsonl")  # from the cache
    assert again == made["train"]


def test_kl_on_own_samples_matches_the_closed_form(tiny_gpt2):
    """One-token replies: the exact KL along each sample is KL(pi(.|x) || pi_ref(.|x)) in closed form, and the
    Monte-Carlo estimate (log-ratio of the sampled tokens) converges to it."""
    tok = gpt2_tokenizer()
    policy = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompt = "The patients were"
    x = torch.tensor([tok(prompt).input_ids])
    with torch.no_grad():
        lp = policy(input_ids=x).logits[0, -1].log_softmax(-1)
        lr = reference(input_ids=x).logits[0, -1].log_softmax(-1)
    closed = float((lp.exp() * (lp - lr)).sum())
    ratio = lp - lr
    sd = float(((lp.exp() * (ratio - closed) ** 2).sum()).sqrt())
    n = 300
    kl = preferences.sampled_kl(policy, reference, tok, [prompt] * n, max_new_tokens=1, seed=0)
    assert kl["tokens"] == n and kl["exact"] == pytest.approx(closed, rel=1e-4)
    assert abs(kl["mc"] - closed) < 4 * sd / math.sqrt(n) and closed > 0
    same = preferences.sampled_kl(policy, policy, tok, [prompt] * 5, max_new_tokens=3, seed=0)
    assert same["mc"] == 0 and same["exact"] == pytest.approx(0, abs=1e-6)


def test_beta_sweep_script_runs_each_beta_and_plots(domain_data, tiny_llama, tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("sweep", Path(__file__).parents[2] / "scripts" / "dpo_beta_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path / "cache" / "models"))
    rows = sweep.sweep(str(tiny_llama), "pubmed-spin", [0.1, 0.5, 1.0], tmp_path / "s", "smoke", [])
    assert [r["beta"] for r in rows] == [0.1, 0.5, 1.0] and all(r["kl_on_samples"] for r in rows)
    assert (tmp_path / "s" / "beta_sweep.png").is_file()
    assert json.loads((tmp_path / "s" / "beta_sweep.json").read_text()) == json.loads(json.dumps(rows))
    assert len(list((tmp_path / "cache" / "pairs").glob("*.jsonl"))) == 2  # sampled once for all three betas

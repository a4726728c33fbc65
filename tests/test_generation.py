from __future__ import annotations

import json

import torch

from lmlab.cli import main
from lmlab.generation import SamplingSettings, generate, next_token
from lmlab.trained import load_trained


def test_strategies_on_a_known_distribution():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0]).log_softmax(-1)  # any order works; 0 is the most likely
    g = torch.Generator().manual_seed(0)
    assert next_token(logits, [], SamplingSettings("greedy"), g) == 0
    assert {next_token(logits, [], SamplingSettings("top-k", top_k=1), g) for _ in range(20)} == {0}
    assert {next_token(logits, [], SamplingSettings("top-p", top_p=0.01), g) for _ in range(20)} == {0}
    top2 = {next_token(logits, [], SamplingSettings("top-k", top_k=2), g) for _ in range(200)}
    assert top2 == {0, 1}
    assert {next_token(logits, [], SamplingSettings("temperature", temperature=1e-3), g) for _ in range(20)} == {0}


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    g = torch.Generator().manual_seed(0)
    drawn = {next_token(probs.log(), [], SamplingSettings("top-p", top_p=0.8), g) for _ in range(300)}
    assert drawn == {0, 1}  # 0.5 + 0.3 reaches 0.8; 0.15 and 0.05 are cut


def test_repetition_penalty_moves_greedy_off_a_seen_token():
    logits = torch.tensor([2.0, 1.9, -1.0])
    g = torch.Generator()
    assert next_token(logits, [0], SamplingSettings("greedy"), g) == 0
    assert next_token(logits, [0], SamplingSettings("greedy", repetition_penalty=1.5), g) == 1


def test_same_seed_same_text_and_cache_equals_recompute(tiny_runs):
    trained = load_trained(tiny_runs["transformer"], impl="scratch")
    prompt = trained.vocab.encode(["<eos>", "the", "cat"]).tolist()
    s = SamplingSettings("top-p", max_tokens=20)
    a = generate(trained.model, trained.family, prompt, s, seed=3)
    assert a == generate(trained.model, trained.family, prompt, s, seed=3)
    greedy = SamplingSettings("greedy", max_tokens=25)  # stays within the 32-token context
    assert generate(trained.model, trained.family, prompt, greedy, use_cache=True) == \
        generate(trained.model, trained.family, prompt, greedy, use_cache=False)


def test_generation_past_the_context_length_keeps_going(tiny_runs):
    trained = load_trained(tiny_runs["transformer"], impl="scratch")
    out = generate(trained.model, trained.family, [trained.vocab.eos_id], SamplingSettings("temperature", max_tokens=80))
    assert len(out) == 80


def test_sample_cli_side_by_side_with_statistics_and_oov_warning(tiny_runs, tmp_path, capsys):
    out = tmp_path / "samples.json"
    runs = [str(tiny_runs[m]) for m in ("rnn", "lstm", "transformer")]
    assert main(["sample", *runs, "--prompt", "the cat", "--prompt", "a zebra", "--strategy", "greedy",
                 "--strategy", "top-k", "--samples", "2", "--max-tokens", "10", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "outside the vocabulary become <unk>: zebra" in captured.err
    import json

    result = json.loads(out.read_text())
    assert len(result["samples"]) == 3 * 2 * (1 + 2)
    assert all(s["judge"] and s["judge"] != s["model"] for s in result["samples"])
    assert {(e["model"], e["strategy"]) for e in result["summary"]} == {
        (m, st) for m in ("rnn", "lstm", "transformer") for st in ("greedy", "top-k k=40 T=1")}
    assert "| transformer | top-k k=40 T=1 | 4 |" in captured.out
    for e in result["summary"]:  # two greedy and four top-k samples per model: each mean gets its interval
        low, high = e["fluency_ppl_ci95"]
        assert low <= e["fluency_ppl"] <= high
        assert f"{e['fluency_ppl']:.1f} [{low:.1f}, {high:.1f}]" in captured.out


def test_fluency_interval_is_the_bootstrap_of_the_samples():
    from lmlab.metrics.bootstrap import bootstrap_mean_ci
    from lmlab.recipes.sample import summarise

    stats = {"distinct_1": 1.0, "distinct_2": 1.0, "distinct_3": 1.0, "repeated_4gram_rate": 0.0,
             "longest_repeated_span": 1, "unk_rate": 0.0, "mean_sentence_length": 5.0}
    fluency = [10.0, 20.0, 30.0, 100.0]
    rows = [{"model": "m", "strategy": "top-k", "stats": dict(stats, fluency_ppl=f)} for f in fluency]
    (entry,) = summarise(rows)
    assert entry["fluency_ppl"] == 40.0
    assert entry["fluency_ppl_ci95"] == list(bootstrap_mean_ci(fluency))
    assert entry["fluency_ppl_ci95"][0] < 40.0 < entry["fluency_ppl_ci95"][1]
    (single,) = summarise(rows[:1])  # one sample: a mean but no interval
    assert single["fluency_ppl"] == 10.0 and single["fluency_ppl_ci95"] is None


def test_empty_prompt_starts_from_eos_and_bad_settings_are_one_line(tiny_runs, capsys):
    assert main(["sample", str(tiny_runs["lstm"]), "--max-tokens", "5", "--json"]) == 0
    capsys.readouterr()
    assert main(["sample", str(tiny_runs["lstm"]), "--strategy", "top-p", "--top-p", "1.5"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_pretrained_models_sample_through_the_same_code_with_their_cache(tiny_gpt2):
    from transformers import AutoModelForCausalLM

    from lmlab.families import PRETRAINED
    from lmlab.generation import SamplingSettings, generate

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    prompt = [50256, 464, 21919]
    greedy = generate(model, PRETRAINED, prompt, SamplingSettings("greedy", max_tokens=6))
    ids = list(prompt)
    with torch.no_grad():  # the same greedy continuation without any cache
        for _ in range(6):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert greedy == ids[len(prompt):]
    s = SamplingSettings("top-p", top_p=0.9, max_tokens=6)
    assert generate(model, PRETRAINED, prompt, s, seed=3) == generate(model, PRETRAINED, prompt, s, seed=3)


def test_lmlab_sample_takes_pretrained_models_beside_ptb_runs(tiny_gpt2, capsys):
    from lmlab.cli import main

    assert main(["sample", str(tiny_gpt2), "--prompt", "The kidney", "--strategy", "greedy", "--strategy", "top-k",
                 "--max-tokens", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {r["strategy"] for r in result["samples"]} == {"greedy", "top-k k=40 T=1"}
    assert all(r["model"] == "model" and r["stats"]["fluency_ppl"] is None for r in result["samples"])


def test_ban_unk_keeps_unk_out_of_word_level_samples(tiny_runs, capsys):
    from lmlab.cli import main

    args = ["sample", str(tiny_runs["lstm"]), "--prompt", "the zebra", "--strategy", "greedy", "--strategy", "top-k",
            "--samples", "3", "--max-tokens", "40", "--json"]
    assert main([*args, "--ban-unk"]) == 0
    banned = json.loads(capsys.readouterr().out)
    assert all("<unk>" not in s["text"].split() and s["stats"]["unk_rate"] == 0 for s in banned["samples"])
    assert len(banned["samples"]) == 4 and all(len(s["text"].split()) == 40 for s in banned["samples"])


def test_a_banned_id_is_never_chosen_even_when_it_is_the_most_likely():
    class Loves3:
        """A 'family' whose every step puts most probability on id 3."""

        def stepper(self, model, device, use_cache=True):
            return lambda tokens, new: torch.tensor([0.0, 1.0, 0.5, 9.0])

    model = torch.nn.Linear(1, 1)
    greedy = SamplingSettings("greedy", max_tokens=5)
    assert generate(model, Loves3(), [0], greedy) == [3] * 5
    assert generate(model, Loves3(), [0], greedy, banned=[3]) == [1] * 5
    sampled = generate(model, Loves3(), [0], SamplingSettings("temperature", temperature=5.0, max_tokens=200), seed=1,
                       banned=[3])
    assert 3 not in sampled and {0, 1, 2} == set(sampled)

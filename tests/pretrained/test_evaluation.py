"""The before/after harness checked against transformers' own loss and against hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from lmlab.data.documents import Document, QARecord
from lmlab.pretrained import cloze, likelihood, perplexity, pubmedqa
from lmlab.pretrained.domain_data import encode, start_ids
from tests.conftest import gpt2_tokenizer

TEXT = ("Chronic kidney disease affects millions of adults. Early treatment slows the loss of kidney function, "
        "and blood pressure control is the first step. ") * 6


@pytest.fixture(scope="module")
def model(tiny_gpt2):
    return AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()


def test_one_window_equals_transformers_loss(model):
    tok = gpt2_tokenizer()
    ids = start_ids(tok) + encode(tok, TEXT)
    nll, count = perplexity.sliding_nll(model, ids, window=len(ids), stride=len(ids) - 1)
    with torch.no_grad():
        hf_loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert count == len(ids) - 1
    assert nll / count == pytest.approx(hf_loss, rel=1e-5)


def test_sliding_windows_score_every_token_once_with_the_stated_context(model):
    tok = gpt2_tokenizer()
    ids = start_ids(tok) + encode(tok, TEXT)
    window, stride = 32, 12
    nll, count = perplexity.sliding_nll(model, ids, window, stride)
    assert count == len(ids) - 1
    # by hand: token t is scored in the window that ends at the first window end >= t+1
    expected, scored_to = 0.0, 1
    while scored_to < len(ids):
        end = min(len(ids), max(scored_to + stride, window))
        begin = max(0, end - window)
        assert scored_to - begin >= min(scored_to, window - stride)  # the promised context
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[begin:end]])).logits[0]
        for t in range(scored_to, end):
            expected += F.cross_entropy(logits[t - begin - 1][None], torch.tensor([ids[t]])).item()
        scored_to = end
    assert nll == pytest.approx(expected, rel=1e-6)


def test_word_and_byte_perplexity_divide_the_same_nll(model):
    tok = gpt2_tokenizer()
    score = perplexity.score_texts(model, tok, [TEXT, "Short one."], window=64, stride=32).as_dict()
    assert score["words"] == len(TEXT.split()) + 2
    assert score["bytes"] == len(TEXT.encode()) + len("Short one.")
    assert score["word_ppl"] == pytest.approx(math.exp(score["nll"] / score["words"]))
    assert score["byte_ppl"] == pytest.approx(math.exp(score["nll"] / score["bytes"]))
    assert score["bits_per_byte"] == pytest.approx(math.log2(score["byte_ppl"]))


def test_pubmedqa_single_token_shortcut_equals_full_continuations(model):
    tok = gpt2_tokenizer()
    record = QARecord("1", "Does aspirin reduce fever?", "Aspirin was given to 40 patients. " * 10, "It does.", "yes")
    prompt = pubmedqa.instructed_prompt_ids(tok, record, max_tokens=48)
    assert len(prompt) <= 48 and prompt[-1] == encode(tok, "Answer:")[-1]
    full = likelihood.continuation_logprobs(model, prompt, [encode(tok, f" {a}") for a in pubmedqa.ANSWERS])
    with torch.no_grad():
        last = model(input_ids=torch.tensor([prompt])).logits[0, -1].log_softmax(-1)
    assert full == pytest.approx([last[encode(tok, f" {a}")[0]].item() for a in pubmedqa.ANSWERS], abs=1e-5)
    result = pubmedqa.evaluate(model, tok, [record] * 3, "instructed", max_tokens=48, resamples=100)
    assert result["questions"] == 3 and result["majority_baseline"] == 1.0
    assert result["accuracy"] == (pubmedqa.ANSWERS[max(range(3), key=full.__getitem__)] == "yes")


def test_cloze_rule_blanks_a_domain_term_with_frequency_neighbours():
    domain = [Document(str(i), "Title\nThe nephrectomy was followed by dialysis and transfusion in patients.")
              for i in range(30)] + [Document("x", "Title\nCats sleep. " + "Renal biopsy showed fibrosis. " * 12)]
    general = "The cat sat on the mat with the patients. " * 50
    terms = dict(cloze.domain_terms(domain, general))
    assert {"nephrectomy", "dialysis", "transfusion", "fibrosis"} <= set(terms)
    assert "patients" not in terms  # frequent in the general text too
    test_docs = [Document("t", "A title\nShort. In the clinic, dialysis was started after the nephrectomy today.")]
    [item] = cloze.cloze_items(test_docs, list(terms.items()), n_items=5, n_candidates=3)
    assert item.answer == "dialysis" and item.answer in item.candidates and len(item.candidates) == 3
    assert "nephrectomy" not in item.candidates  # a candidate never occurs in the sentence itself
    assert item.candidates == ["dialysis", "fibrosis", "followed"]  # same ending first, then nearest in frequency
    assert item.context.endswith("In the clinic, ") and item.rest.startswith(" was started")


def test_ft_eval_json_on_stdout_and_a_table_for_two_models(domain_data, tiny_gpt2, tmp_path, capsys):
    import json

    from lmlab.cli import main

    assert main(["ft-eval", str(tiny_gpt2), "--preset", "smoke", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    for key in ("domain_ppl", "general_ppl", "word_ppl", "byte_ppl", "pubmedqa_acc", "cloze_acc"):
        assert key in result
    assert set(result["general_ppl"]) == {"wikitext2", "shakespeare"} and result["cloze"]["items"] == 5
    assert main(["ft-eval", str(tiny_gpt2), str(tiny_gpt2), "--preset", "smoke", "--out", str(tmp_path),
                 "--name", "before", "--name", "after"]) == 0
    table = capsys.readouterr().out
    before = json.loads((tmp_path / "before.json").read_text())
    assert f"| domain token ppl | {before['domain_ppl']:.3f} | {before['domain_ppl']:.3f} |" in table
    assert (tmp_path / "comparison.md").read_text().strip() == table.strip()


def test_ft_eval_task_scores_pubmedqa_alone(domain_data, tiny_gpt2, tmp_path, capsys):
    import json

    from lmlab.cli import main

    assert main(["ft-eval", str(tiny_gpt2), "--task", "--preset", "smoke", "--out", str(tmp_path), "--name", "qa"]) == 0
    result = json.loads((tmp_path / "qa.json").read_text())
    assert set(result["pubmedqa_settings"]) == {"lm-eval 0-shot"} and "domain_ppl" not in result
    scores = result["pubmedqa_settings"]["lm-eval 0-shot"]
    assert scores["questions"] == 6 and sum(scores["predicted"].values()) == 6
    assert f"| lm-eval 0-shot | 6 | {scores['accuracy']:.3f} [" in capsys.readouterr().out


def test_pubmedqa_calibration_removes_a_constant_bias(model, monkeypatch):
    tok = gpt2_tokenizer()
    records = [QARecord(str(i), f"Question {i}?", "Context.", "", gold) for i, gold in enumerate(["yes", "no", "maybe"])]
    # a model that always prefers "no" by 5 nats, plus a small per-question signal towards the right answer
    signal = {"yes": [1.0, 0, 0], "no": [0, 1.0, 0], "maybe": [0, 0, 1.0]}

    def scores(model, tokenizer, prompt):
        bias = [0.0, 5.0, 0.0]
        text = tokenizer.decode(prompt)
        if "Question: N/A" in text:  # the content-free question
            return bias
        record = next(r for r in records if f"Question: {r.question}" in text)
        return [b + s for b, s in zip(bias, signal[record.decision])]

    monkeypatch.setattr(pubmedqa, "answer_scores", scores)
    result = pubmedqa.evaluate(model, tok, records, "instructed", max_tokens=64, resamples=100)
    assert result["predicted"] == {"no": 3} and result["accuracy"] == pytest.approx(1 / 3)
    assert result["calibrated_accuracy"] == 1.0 and result["calibrated_predicted"] == {"yes": 1, "no": 1, "maybe": 1}


class FixedLM(torch.nn.Module):
    """Logits fixed by hand at every position: 0 for every token but the three verdicts."""

    def __init__(self, vocab_size: int, verdict_logits: dict[int, float]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.logits = torch.zeros(vocab_size)
        for token, value in verdict_logits.items():
            self.logits[token] = value
        self.seen = []

    def forward(self, input_ids, **_):
        from types import SimpleNamespace

        self.seen.append(input_ids[0].tolist())
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1).clone())


def test_pubmedqa_lm_eval_prompt_and_scores_by_hand():
    """lm-eval's pubmedqa prompt, verbatim, and each verdict's log-likelihood computed by hand."""
    tok = gpt2_tokenizer()
    record = QARecord("7", "Does the drug work?", "Part one. Part two.", "", "no", ("Part one.", "Part two."))
    prompt = pubmedqa.lm_eval_prompt_ids(tok, record, max_tokens=512)
    assert tok.decode(prompt) == "Abstract: Part one.\nPart two.\nQuestion: Does the drug work?\nAnswer:"
    assert prompt == encode(tok, pubmedqa.lm_eval_text(record))  # GPT-2 adds no BOS, and neither does lm-eval
    yes, no, maybe = (encode(tok, f" {a}")[0] for a in pubmedqa.ANSWERS)
    model = FixedLM(len(tok), {yes: 1.0, no: 3.0, maybe: 2.0})
    z = (len(tok) - 3) + math.e + math.e ** 3 + math.e ** 2  # softmax denominator, by hand
    assert pubmedqa.answer_scores(model, tok, prompt) == pytest.approx([1 - math.log(z), 3 - math.log(z),
                                                                        2 - math.log(z)], rel=1e-5)  # fp32
    shot = QARecord("3", "Is water wet?", "Water.", "", "yes", ("Water.",))
    few = pubmedqa.lm_eval_prompt_ids(tok, record, 512, [shot], 64)
    assert tok.decode(few) == ("Abstract: Water.\nQuestion: Is water wet?\nAnswer: yes\n\n"
                               "Abstract: Part one.\nPart two.\nQuestion: Does the drug work?\nAnswer:")
    result = pubmedqa.evaluate(model, tok, [record, shot], "lm-eval", resamples=200)
    assert result["predicted"] == {"no": 2} and result["accuracy"] == 0.5 and model.seen[0] == prompt
    assert result["confusion"] == {"yes": {"no": 1}, "no": {"no": 1}, "maybe": {}}
    assert result["macro_f1"] == pytest.approx((0 + 2 / 3 + 0) / 3)  # F1(no) = 2*1/(2*1+1+0)


def test_long_abstracts_are_cut_from_the_start_keeping_the_question():
    tok = gpt2_tokenizer()
    record = QARecord("1", "Is it?", "", "", "yes", ("word " * 400 + "the last finding.",))
    prompt = pubmedqa.lm_eval_prompt_ids(tok, record, max_tokens=40)
    assert len(prompt) <= 40
    assert tok.decode(prompt).startswith("Abstract: ") and tok.decode(prompt).endswith(
        "the last finding.\nQuestion: Is it?\nAnswer:")


def test_classification_report_by_hand():
    from lmlab.metrics.bootstrap import classification_report

    gold = ["yes"] * 6 + ["no"] * 3 + ["maybe"]
    constant = classification_report(gold, ["yes"] * 10, pubmedqa.ANSWERS, resamples=500)
    assert constant["accuracy"] == 0.6 == constant["majority_baseline"] and constant["majority_class"] == "yes"
    assert constant["macro_f1"] == pytest.approx((2 * 6 / (2 * 6 + 4)) / 3)  # F1(yes) = 0.75; the others 0
    low, high = constant["accuracy_ci95"]
    assert low < 0.6 < high and 0 <= low and high <= 1
    perfect = classification_report(gold, gold, pubmedqa.ANSWERS, resamples=200)
    assert perfect["accuracy_ci95"] == (1.0, 1.0) and perfect["macro_f1"] == 1.0


def test_few_shot_examples_come_from_training_questions_only(domain_data, monkeypatch):
    from lmlab.pretrained.domain_data import pubmedqa_records
    from lmlab.recipes import ft_eval

    test_ids = {r.id for r in pubmedqa_records()["test"]}
    pools = []

    def spy(model, tok, records, variant, shots, pool, *args):
        pools.append(pool)
        assert {r.id for r in records} <= test_ids
        return {"accuracy": 0.0, "accuracy_ci95": (0, 0), "macro_f1": 0.0, "questions": len(records),
                "majority_baseline": 0.5, "predicted": {}}

    monkeypatch.setattr(pubmedqa, "evaluate", spy)
    cfg = ft_eval.configure("smoke")
    ft_eval._pubmedqa(None, None, cfg.pubmedqa, cfg.pubmedqa.variants, cfg.pubmedqa.shots)
    assert pools and all(len(p) > 300 and not {r.id for r in p} & test_ids for p in pools)


def test_stride_grid_variant_equals_the_hugging_face_perplexity_guide(model):
    """The guide's loop (transformers docs, "Perplexity of fixed-length models") with transformers' own loss,
    each window's mean loss weighted by the tokens it really predicts, equals sliding_nll(last="stride")."""
    tok = gpt2_tokenizer()
    ids = start_ids(tok) + encode(tok, TEXT)
    window, stride = 64, 24
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        trg_len = end - prev_end
        input_ids = torch.tensor([ids[begin:end]])
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss.item()
        predicted = int((target_ids[:, 1:] != -100).sum())  # the labels left after transformers' shift
        nll_sum, n_tokens, prev_end = nll_sum + loss * predicted, n_tokens + predicted, end
        if end == len(ids):
            break
    ours, count = perplexity.sliding_nll(model, ids, window, stride, last="stride")
    assert count == n_tokens == len(ids) - 1
    assert ours == pytest.approx(nll_sum, rel=1e-6)
    default, _ = perplexity.sliding_nll(model, ids, window, stride)
    assert default != pytest.approx(nll_sum, rel=1e-9)  # the default's last window has more context


def test_a_bos_model_gets_its_bos_before_every_window_and_each_token_is_scored_once(model):
    """Gemma was trained always to see <bos> first: every window after the first starts with it. The scored
    tokens stay the same (each once, same order); only what the model sees before them changes."""
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids):
            seen.append(input_ids[0].tolist())
            return self.inner(input_ids=input_ids)

    bos, ids = 50256, [50256] + list(range(100, 300))
    plain = list(perplexity._windows(Recording(), ids, 64, 24, "end"))
    assert [row[0] for row in seen[1:]] != [bos] * (len(seen) - 1)  # plain windows start mid-text
    seen.clear()
    prefixed = list(perplexity._windows(Recording(), ids, 64, 24, "end", prefix=[bos]))
    assert all(row[0] == bos for row in seen) and len(seen) == len(plain) > 3
    assert torch.cat([t for _, t in prefixed]).tolist() == torch.cat([t for _, t in plain]).tolist() == ids[1:]
    with_bos, count = perplexity.sliding_nll(model, ids, 64, 24, prefix=[bos])
    without, _ = perplexity.sliding_nll(model, ids, 64, 24)
    assert count == len(ids) - 1 and with_bos != pytest.approx(without, rel=1e-6)

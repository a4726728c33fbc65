"""The page's scoring equals lmlab eval (word-level runs) and lmlab ft-eval (pretrained models) on the same text."""

from __future__ import annotations

import math

import pytest
from transformers import AutoModelForCausalLM

from lmlab.errors import LmlabError
from lmlab.pretrained import perplexity
from lmlab.recipes import evaluate
from lmlab.surprisal import STRIDE, WINDOW, Pretrained, cap_words, score
from lmlab.trained import load_trained
from tests.conftest import gpt2_tokenizer

TEXT = "The company said it expects sales to rise.\nAnalysts were not surprised, and the shares closed higher."


def test_word_level_surprisal_equals_lmlab_eval_on_the_same_file(tiny_runs, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    for run in tiny_runs.values():
        expected = evaluate.run([run], [f"file:{path}"])[0]
        result = score(load_trained(run), TEXT)
        s = result["summary"]
        assert s["targets"] == expected["tokens"] and s["ppl"] == pytest.approx(expected["ppl"], rel=1e-9)
        assert sum(t["bits"] for t in result["tokens"]) * math.log(2) == pytest.approx(expected["nll"], rel=1e-9)
        assert s["oov"] == sum(t["oov"] for t in result["tokens"]) > 0  # the tiny corpus lacks most of these words
        assert all(t["scored_as"] == "<unk>" for t in result["tokens"] if t["oov"])
        assert [w["text"] for w in result["words"]] == [t["text"] for t in result["tokens"]]


def test_pretrained_surprisal_equals_ft_eval_and_sums_by_word(tiny_gpt2):
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval(), gpt2_tokenizer()
    result = score(Pretrained("tiny", model, tok), TEXT)
    expected = perplexity.score_texts(model, tok, [TEXT], WINDOW, STRIDE).as_dict()
    s = result["summary"]
    assert s["targets"] == expected["tokens"] and s["nll"] == pytest.approx(expected["nll"], rel=1e-6)
    assert s["ppl"] == pytest.approx(expected["word_ppl"], rel=1e-5)  # whitespace words, as ft-eval counts them (float32 sums)
    assert s["bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-6)
    assert [w["text"] for w in result["words"]] == TEXT.split()
    assert sum(w["bits"] for w in result["words"]) == pytest.approx(sum(t["bits"] for t in result["tokens"]))
    first = result["tokens"][0]
    assert first["rank"] >= 1 and len(first["top"]) == 5 and first["top"][0]["prob"] >= first["prob"] - 1e-9


def test_long_texts_are_capped_visibly_and_empty_ones_refused(tiny_runs):
    text = " ".join(["word"] * 30)
    assert cap_words(text, 10) == (" ".join(["word"] * 10), 30)
    summary = score(load_trained(tiny_runs["lstm"]), text, max_words=10)["summary"]
    assert summary["capped"] and summary["words_in_text"] == 30 and summary["targets"] == 11  # 10 words + <eos>
    with pytest.raises(LmlabError, match="the text is empty"):
        score(load_trained(tiny_runs["lstm"]), "  \n")

"""lmlab eval: exact reproduction of training numbers, OOV accounting by hand, comparison outputs, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmlab.cli import main
from lmlab.recipes import evaluate
from lmlab.training import rundir


@pytest.mark.parametrize("model", ["rnn", "transformer"])
def test_eval_on_the_training_corpus_reproduces_final_json(tiny_runs, model):
    run = tiny_runs[model]
    final = json.loads((run / "final.json").read_text())
    test_file = f"{final['config']['data']['corpus']}/test.txt"
    [result] = evaluate.run([run], [f"tokens:{test_file}"])
    assert result["tokens"] == final["tokens"]["test"]
    assert result["ppl"] == pytest.approx(final["test_ppl"], rel=1e-12)


def test_oov_accounting_with_a_known_unigram_model(tiny_runs, tmp_path):
    """A recurrent model whose weights are zero and whose decoder bias is log p predicts p everywhere, so
    every number can be computed by hand."""
    src = tiny_runs["rnn"]
    run = tmp_path / "unigram"
    run.mkdir()
    for name in (rundir.FINAL, rundir.VOCAB, rundir.CONFIG):
        (run / name).write_bytes((src / name).read_bytes())
    vocab = [line.split("\t")[0] for line in (src / rundir.VOCAB).read_text().splitlines()]
    state = torch.load(src / rundir.BEST)["model"]
    for tensor in state.values():
        tensor.zero_()
    p = torch.full((len(vocab),), 0.5 / (len(vocab) - 2))
    p[vocab.index("the")] = 0.25
    p[vocab.index("<unk>")] = 0.25
    state["decoder.bias"] = p.log()
    torch.save({"model": state, "epoch": 1, "valid_loss": 0.0}, run / rundir.BEST)

    text = tmp_path / "hand.txt"
    text.write_text("The zebra sees the quokka.\n")  # -> the zebra sees the quokka <eos>
    [r] = evaluate.run([run], [f"file:{text}"])
    rest = 0.5 / (len(vocab) - 2)
    # targets: the (1/4), zebra-><unk> (1/4), sees (rest), the (1/4), quokka-><unk> (1/4), <eos> (rest)
    nll = 4 * math.log(4) + 2 * -math.log(rest)
    assert r["tokens"] == 6 and r["oov_words"] == 2 and r["oov_rate"] == pytest.approx(2 / 6)
    assert r["nll"] == pytest.approx(nll, rel=1e-6)
    assert r["ppl"] == pytest.approx(math.exp(nll / 6), rel=1e-6)
    # in-vocabulary targets: the, sees, the, <eos>
    assert r["in_vocab_tokens"] == 4
    assert r["ppl_in_vocab"] == pytest.approx(math.exp((2 * math.log(4) - 2 * math.log(rest)) / 4), rel=1e-6)
    assert r["buckets"]["unk"]["tokens"] == 2


def test_compare_writes_table_chart_and_names_extremes(tiny_runs, tmp_path, ptb_available):
    out = tmp_path / "cmp"
    assert main(["eval", str(tiny_runs["rnn"]), str(tiny_runs["lstm"]), "--corpus", "ptb:test",
                 "--corpus", "shakespeare", "--compare", str(out), "--threads", "1"]) == 0
    assert (out / "cross_domain.png").stat().st_size > 1000
    md = (out / "cross_domain.md").read_text()
    summary = json.loads((out / "cross_domain_summary.json").read_text())
    assert summary["degrades_least"] in ("rnn", "lstm") and "Degrades least" in md
    assert (out / "cross_domain.csv").read_text().count("\n") == 5


def test_json_output_has_the_documented_keys(tiny_runs, capsys, tiny_corpus):
    assert main(["eval", str(tiny_runs["lstm"]), "--corpus", f"file:{tiny_corpus / 'valid.txt'}", "--json"]) == 0
    [obj] = json.loads(capsys.readouterr().out)
    assert {"tokens", "nll", "ppl", "oov_rate", "ppl_in_vocab", "normalisation", "buckets", "shift"} <= set(obj)


@pytest.mark.parametrize("spec,message", [("enwik8", "unknown corpus 'enwik8'"), ("file:/no/such.txt", "not found")])
def test_bad_corpus_is_one_line(tiny_runs, capsys, spec, message):
    assert main(["eval", str(tiny_runs["rnn"]), "--corpus", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_run_dir_is_one_line(tmp_path, capsys, tiny_corpus):
    assert main(["eval", str(tmp_path / "nope"), "--corpus", f"file:{tiny_corpus / 'test.txt'}"]) == 2
    assert "run directory" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_per_token_records_add_up_to_the_evaluation(tiny_runs, tmp_path, capsys, model):
    """`lmlab eval --tokens` writes what the page colours: the same NLLs that make the perplexity, each with
    its probability, rank and the model's five most likely tokens."""
    text = tmp_path / "t.txt"
    text.write_text("The cat sees the zebra. A dog likes fish.\n")
    out = tmp_path / "tokens.jsonl"
    assert main(["eval", str(tiny_runs[model]), "--corpus", f"file:{text}", "--tokens", str(out), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == result["tokens"] and [r["index"] for r in rows] == list(range(len(rows)))
    assert sum(r["nll"] for r in rows) == pytest.approx(result["nll"], rel=1e-12)
    assert [r["word"] for r in rows if r["oov"]] == ["zebra"] and sum(r["oov"] for r in rows) == result["oov_words"]
    for r in rows:
        assert r["prob"] == pytest.approx(math.exp(-r["nll"])) and r["bits"] == pytest.approx(r["nll"] / math.log(2))
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert (r["rank"] == 1) == (r["top"][0]["token"] == r["token"])
        if r["rank"] <= 5:
            assert r["top"][r["rank"] - 1]["prob"] == pytest.approx(r["prob"], rel=1e-6)

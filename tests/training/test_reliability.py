"""Faults and bad input (issue: safe to load, hard to break): each case through the CLI where a user meets it,
checking the exit code, a one-line message, and that finished results are untouched. docs/reliability.md
lists every case with its test."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from lmlab.cli import main
from lmlab.metrics.text_stats import longest_repeated_span

TINY = ["--preset", "smoke", "--set", "data.max_eval_tokens=0"]
CORPUS = "\n\n".join(f"Case {i}. The kidney filters the blood and removes waste. Insulin lowers the level of "
                     "glucose in the blood. The heart pumps blood through the arteries." for i in range(60))


def one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("lmlab: error")]
    assert len(err) == 1, err
    return err[0]


def train(corpus, out, *extra, model="rnn"):
    return main(["train", "--model", model, *TINY, "--set", f"data.corpus={corpus}", "--out", str(out), *extra])


# --- 1. a checkpoint cannot run code ----------------------------------------------------------------------------

class _Exploit:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_checkpoint_that_carries_code_is_refused_and_never_runs_it(tiny_runs, tmp_path, capsys, command):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["rnn"], run)
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    torch.save({"model": _Exploit()}, run / "best.pt")  # what an attacker would share
    args = ["--corpus", f"tokens:{tiny_runs['rnn'].parent / 'tiny' / 'test.txt'}"] if command == "eval" else []
    assert main([command, str(run), *args]) == 2
    message = one_line(capsys)
    assert "unreadable" in message and "never loads" in message
    assert not marker.exists()


# --- 2. a finished fine-tune is not restarted by --resume; rows after the checkpoint are not repeated ------------

def test_resume_of_a_finished_finetune_refuses_and_keeps_results(tiny_gpt2, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    args = ["finetune", "--model", str(tiny_gpt2), "--text-file", str(corpus), "--preset", "smoke", "--out",
            str(tmp_path / "ft"), "--set", "train.general_corpus=", "--set", "data.train_docs=0", "--set", "data.seq_len=32"]
    assert main(args) == 0
    before = {f: (tmp_path / "ft" / f).read_bytes() for f in ("final.json", "metrics.jsonl")}
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    assert "finished run with nothing to resume" in one_line(capsys)
    assert before == {f: (tmp_path / "ft" / f).read_bytes() for f in before}


def test_rows_logged_after_the_last_checkpoint_are_not_repeated_on_resume(tiny_gpt2, tmp_path, monkeypatch):
    from lmlab.recipes import finetune
    from lmlab.training.logger import MetricsLogger

    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    cfg = finetune.configure(str(tiny_gpt2), f"text:{corpus}", "smoke", ["train.general_corpus=", "data.train_docs=0",
                             "data.seq_len=32", "train.steps=6", "train.eval_every=2"])
    real = MetricsLogger.log

    def killed_at_step_3(self, row, step, prefix=""):  # kill -9 after step 3's row, checkpoint at step 2
        real(self, row, step, prefix)
        if row.get("kind") == "train" and row["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(MetricsLogger, "log", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(cfg, tmp_path / "ft")
    monkeypatch.setattr(MetricsLogger, "log", real)
    finetune.run(cfg, tmp_path / "ft", resume=True)
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 2, 4, 6]


# --- 3. a full disk while checkpointing -----------------------------------------------------------------------

def test_a_full_disk_mid_checkpoint_leaves_a_run_that_resumes_exactly(tiny_corpus, tmp_path, capsys, monkeypatch):
    from lmlab.training import rundir

    assert train(tiny_corpus, tmp_path / "straight", "--set", "train.epochs=2") == 0
    real_save, calls = torch.save, {"n": 0}

    def save_until_disk_fills(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2's best.pt: a partial file, then torch's own kind of error
            Path(f).write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:659] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_until_disk_fills)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))
    run = tmp_path / "full"
    assert train(tiny_corpus, run, "--set", "train.epochs=2") == 28
    assert "the disk is full" in capsys.readouterr().err
    assert not list(run.glob("*.tmp"))
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    monkeypatch.setattr(torch, "save", real_save)
    assert train(tiny_corpus, run, "--set", "train.epochs=2", "--resume") == 0
    a, b = ([json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()] for d in (tmp_path / "straight", run))
    assert [r["valid_loss"] for r in a] == pytest.approx([r["valid_loss"] for r in b], rel=1e-9)


def test_a_stop_between_the_last_checkpoint_and_its_metrics_row_resumes_to_a_finished_run(tiny_corpus, tmp_path,
                                                                                           monkeypatch):
    """The run's last epoch saved last.pt, then stopped before metrics.jsonl had its row: the resume has no steps
    left to train, and still finishes with that epoch's row (kept in the checkpoint), final.json and curves."""
    from lmlab.training import checkpoint

    real = checkpoint.save

    def stopped_after_saving(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    run, steps = tmp_path / "run", ("--set", "train.steps=10")  # one epoch, which is also the last
    monkeypatch.setattr(checkpoint, "save", stopped_after_saving)
    assert train(tiny_corpus, run, *steps) == 130
    assert not (run / "metrics.jsonl").is_file() and not (run / "final.json").is_file()
    monkeypatch.setattr(checkpoint, "save", real)
    assert train(tiny_corpus, run, *steps, "--resume") == 0
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 10)]
    final = json.loads((run / "final.json").read_text())
    assert final["epochs"] == 1 and final["status"] == "finished" and (run / "curves.png").is_file()


# --- 4. corpus checksums --------------------------------------------------------------------------------------

def test_a_corrupted_corpus_file_is_refused_with_its_name(ptb_available, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(ptb_available / "ptb", data / "ptb")
    train_file = data / "ptb" / "ptb.train.txt"
    train_file.write_text(train_file.read_text().replace(" the ", " teh ", 1))
    monkeypatch.setenv("LMLAB_DATA_DIR", str(data))
    monkeypatch.setenv("LMLAB_STATE_DIR", str(tmp_path / "state"))
    assert main(["train", "--model", "lstm", "--preset", "smoke", "--out", str(tmp_path / "r")]) == 2
    message = one_line(capsys)
    assert str(train_file) in message and "lmlab data download ptb" in message and not (tmp_path / "r" / "config.json").exists()


def test_checksum_verification_is_remembered_by_size_and_mtime(ptb_available, tmp_path, monkeypatch):
    from lmlab.data import corpora

    monkeypatch.setenv("LMLAB_STATE_DIR", str(tmp_path / "state"))
    hashed = []
    real = corpora.sha256_of
    monkeypatch.setattr(corpora, "sha256_of", lambda p: hashed.append(p) or real(p))
    corpora.split_path("ptb", "valid")
    corpora.split_path("ptb", "valid")
    assert len(hashed) == 1


# --- 5. divergence --------------------------------------------------------------------------------------------

def test_a_huge_learning_rate_is_divergence_not_a_finished_run(tiny_corpus, tmp_path, capsys):
    assert train(tiny_corpus, tmp_path / "r", "--set", "optim.lr=1e9", "--set", "train.epochs=2") == 2
    assert "diverged" in one_line(capsys)


# --- 6. --set values are checked when the config is loaded ----------------------------------------------------

@pytest.mark.parametrize("override,expected", [
    ("model.hidden_size=abc", "model.hidden_size='abc'"), ("train.epochs=abc", "train.epochs='abc'"),
    ("data.batch_size=0", "data.batch_size=0"), ("model.dropout_emb=1.5", "model.dropout_emb=1.5"),
    ("optim.lr=-1", "optim.lr=-1.0"), ("train.epochs=0", "train.epochs=0"),
])
def test_bad_set_values_are_one_line_errors(tiny_corpus, tmp_path, capsys, override, expected):
    assert train(tiny_corpus, tmp_path / "r", "--set", override) == 2
    assert expected in one_line(capsys) and not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_it_is_one_line(tiny_corpus, tmp_path, capsys):
    assert train(tiny_corpus, tmp_path / "r", "--set", "train.device=cuda") == 2
    assert "no CUDA GPU" in one_line(capsys)


# --- 7. empty, foreign and misplaced input --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["file", "tokens"])
def test_empty_evaluation_text_is_one_line(tiny_runs, tmp_path, capsys, kind):
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n\n  \t\n")
    assert main(["eval", str(tiny_runs["rnn"]), "--corpus", f"{kind}:{blank}"]) == 2
    assert "holds no words" in one_line(capsys)


def test_bad_pubmed_count_and_a_directory_for_a_file_are_one_line(tiny_runs, tmp_path, capsys):
    assert main(["eval", str(tiny_runs["rnn"]), "--corpus", "pubmed:abc"]) == 2
    assert "pubmed:N" in one_line(capsys)
    assert main(["eval", str(tiny_runs["rnn"]), "--corpus", f"file:{tmp_path}"]) == 2
    assert "is a directory" in one_line(capsys)


def test_a_non_utf8_training_corpus_is_one_line(tiny_corpus, tmp_path, capsys):
    (tiny_corpus / "train.txt").write_bytes(b"the cat \xff\xfe sees .\n" * 50)
    assert train(tiny_corpus, tmp_path / "r") == 2
    assert "is not UTF-8" in one_line(capsys)


def test_a_finetune_jsonl_whose_text_is_not_a_string_is_one_line(tmp_path, capsys):
    bad = tmp_path / "c.jsonl"
    bad.write_text("\n".join(json.dumps({"text": ["not", "a", "string"]}) for _ in range(5)))
    assert main(["finetune", "--model", "no-such-model", "--jsonl", str(bad), "--preset", "smoke",
                 "--out", str(tmp_path / "ft")]) == 2
    assert "not a string" in one_line(capsys)


# --- 8. long samples --------------------------------------------------------------------------------------------

def test_longest_repeated_span_agrees_with_the_quadratic_definition_and_scales():
    import random

    def brute(t):
        return max([k for i in range(len(t)) for j in range(i + 1, len(t))
                    for k in [next((m for m in range(len(t) - j) if t[i + m] != t[j + m]), len(t) - j)]] or [0])

    rng = random.Random(0)
    for _ in range(300):
        tokens = [rng.choice("abc") for _ in range(rng.randint(0, 30))]
        assert longest_repeated_span(tokens) == brute(tokens)
    block = [str(rng.randint(0, 10**6)) for _ in range(2_000)]
    assert longest_repeated_span(block + ["x"] + block[:1_500] + ["y"] * 96_500) == 96_499


@pytest.mark.parametrize("args,message", [(["--max-tokens", "-5"], "--max-tokens -5"), (["--samples", "0"], "--samples 0")])
def test_negative_lengths_and_zero_samples_are_refused(tiny_runs, capsys, args, message):
    assert main(["sample", str(tiny_runs["lstm"]), *args]) == 2
    assert message in one_line(capsys)


# --- 9. names decided locally -----------------------------------------------------------------------------------

def test_a_mistyped_run_directory_is_never_looked_up_on_the_hub(tmp_path, capsys, monkeypatch):
    from lmlab.pretrained import registry

    monkeypatch.setattr(registry, "load", lambda *a, **k: pytest.fail("looked up as a pretrained model"))
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "lstmm"]) == 2
    assert "no run directory at lstmm" in one_line(capsys)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    (tmp_path / "half" / "metrics.jsonl").write_text("")
    assert main(["sample", "half"]) == 2
    assert "not a finished lmlab train run" in one_line(capsys)


def test_dpo_checks_its_pair_file_before_loading_a_model(tmp_path, capsys, monkeypatch):
    from lmlab.pretrained import registry

    monkeypatch.setattr(registry, "load", lambda *a, **k: pytest.fail("loaded a model before checking the pairs"))
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    assert main(["dpo", "--pairs", f"jsonl:{bad}", "--preset", "smoke", "--out", str(tmp_path / "d")]) == 2
    assert "needs non-empty string fields" in one_line(capsys)


# --- 10. smaller ------------------------------------------------------------------------------------------------

def test_a_failed_train_leaves_nothing_that_blocks_the_retry(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "r"
    assert train(tiny_corpus, out, "--set", "data.max_train_tokens=10") == 2  # too small for one batch
    assert not (out / "config.json").exists()
    capsys.readouterr()
    assert train(tiny_corpus, out, "--set", "train.epochs=1", "--threads", "1") == 0


def test_the_interrupt_message_fits_the_command(tmp_path, capsys, monkeypatch):
    from lmlab.recipes import study

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "write_report", interrupted)
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path), "--only", "report"]) == 130
    err = capsys.readouterr().err
    assert "rerun the same command to continue" in err and "--resume" not in err

"""lmlab train end to end: run directory contents, resume, early stopping, divergence and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lmlab.cli import main

EPOCH_KEYS = {"epoch", "train_loss", "train_ppl", "valid_loss", "valid_ppl", "tokens_per_s", "seconds"}


def tiny(corpus, *extra):
    return ["--set", f"data.corpus={corpus}", "--set", "data.max_eval_tokens=0", *extra]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", ["rnn", "lstm", "transformer"])
def test_smoke_preset_on_ptb_writes_a_complete_run(model, ptb_available, tmp_path):
    run = tmp_path / model
    assert main(["train", "--model", model, "--preset", "smoke", "--out", str(run)]) == 0
    metrics = rows(run)
    assert [r["epoch"] for r in metrics] == [1, 2] and all(EPOCH_KEYS <= set(r) for r in metrics)
    final = json.loads((run / "final.json").read_text())
    assert final["parameters"]["total"] > final["parameters"]["non_embedding"] > 0
    assert final["vocab_size"] == 10_000 and final["tokens"]["test"] == 4000
    assert min(r["valid_ppl"] for r in metrics) == pytest.approx(final["valid_ppl"], rel=1e-9)
    assert json.loads((run / "config.json").read_text())["model"]["arch"] == model
    assert (run / "curves.png").stat().st_size > 1000 and (run / "best.pt").is_file()


def test_resume_continues_exactly_where_the_run_stopped(tiny_corpus, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["train", "--model", "lstm", "--preset", "smoke"]
    assert main([*args, "--out", str(straight), *tiny(tiny_corpus, "--set", "train.epochs=3")]) == 0
    assert main([*args, "--out", str(resumed), *tiny(tiny_corpus, "--set", "train.epochs=1")]) == 0
    assert main([*args, "--out", str(resumed), "--resume", *tiny(tiny_corpus, "--set", "train.epochs=3")]) == 0
    a, b = rows(straight), rows(resumed)
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-6)
        assert x["valid_loss"] == pytest.approx(y["valid_loss"], rel=1e-6)


def test_a_finished_run_is_never_overwritten(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--model", "rnn", "--preset", "smoke", "--out", str(run), *tiny(tiny_corpus, "--set", "train.epochs=1")]
    assert main(args) == 0
    before = (run / "final.json").read_text()
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "final.json").read_text() == before


def test_resume_refuses_a_different_config(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--model", "rnn", "--preset", "smoke", "--out", str(run)]
    assert main([*base, *tiny(tiny_corpus, "--set", "train.epochs=1")]) == 0
    assert main([*base, "--resume", *tiny(tiny_corpus, "--set", "model.hidden_size=16")]) == 2
    assert "differs in model.hidden_size" in capsys.readouterr().err


def test_corrupt_checkpoint_gives_one_line(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--model", "rnn", "--preset", "smoke", "--out", str(run)]
    assert main([*base, *tiny(tiny_corpus, "--set", "train.epochs=1")]) == 0
    (run / "last.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main([*base, "--resume", *tiny(tiny_corpus, "--set", "train.epochs=2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreadable" in err[0] and "Traceback" not in err[0]


def test_early_stopping_after_patience_epochs(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--model", "rnn", "--preset", "smoke", "--out", str(run),
                 *tiny(tiny_corpus, "--set", "train.epochs=5", "--set", "train.patience=1",
                       "--set", "optim.lr=0.0", "--set", "optim.schedule=constant")]) == 0
    assert len(rows(run)) == 2
    assert json.loads((run / "final.json").read_text())["status"] == "early_stopped"


def test_divergence_stops_with_a_message_and_keeps_results(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--model", "rnn", "--preset", "smoke", "--out", str(run),
                 *tiny(tiny_corpus, "--set", "optim.lr=1e38", "--set", "optim.clip=0")])
    captured = capsys.readouterr()
    assert code == 2 and "diverged" in captured.err
    if (run / "best.pt").is_file():  # the first epoch may have finished before the loss blew up
        assert json.loads((run / "final.json").read_text())["status"] == "diverged"


def test_missing_corpus_and_bad_names_are_one_line_errors(tmp_path):
    env = dict(os.environ, LMLAB_DATA_DIR=str(tmp_path / "empty"))
    for args, expected in [
        (["--model", "lstm", "--preset", "smoke"], "lmlab data download ptb"),
        (["--model", "mamba", "--preset", "smoke"], "unknown model 'mamba'"),
        (["--model", "lstm", "--preset", "tiny"], "unknown preset 'tiny'"),
        (["--model", "lstm", "--preset", "smoke", "--set", "optim.nope=1"], "unknown config key"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "lmlab", "train", *args, "--out", str(tmp_path / "r")],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_a_corpus_too_small_for_one_batch_is_one_line(model, tiny_corpus, tmp_path, capsys):
    code = main(["train", "--model", model, "--preset", "smoke", "--out", str(tmp_path / "r"),
                 *tiny(tiny_corpus, "--set", "data.max_train_tokens=10")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "too small for one batch" in err[0]


def test_tensorboard_logging(tiny_corpus, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    assert main(["train", "--model", "rnn", "--preset", "smoke", "--out", str(run),
                 *tiny(tiny_corpus, "--set", "train.epochs=1", "--set", "log.tensorboard=true")]) == 0
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))


def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tiny_corpus, tmp_path):
    """torchrun with 2 gloo processes, each on half the columns, must train the same model as 1 process."""
    common = ["--model", "lstm", "--preset", "smoke", *tiny(tiny_corpus, "--set", "train.epochs=1",
              "--set", "model.dropout_emb=0.0", "--set", "model.dropout_layer=0.0", "--set", "model.dropout_out=0.0",
              "--set", "train.threads=1")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "lmlab", "train", "--out", str(tmp_path / "one"), *common],
                            capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "lmlab", "train", "--out", str(tmp_path / "two"), *common],
                            capture_output=True, text=True, env=env)
    assert double.returncode == 0, double.stderr
    one, two = rows(tmp_path / "one")[0], rows(tmp_path / "two")[0]
    assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-5)
    assert one["valid_loss"] == pytest.approx(two["valid_loss"], rel=1e-5)
    w1 = torch.load(tmp_path / "one" / "best.pt")["model"]
    w2 = torch.load(tmp_path / "two" / "best.pt")["model"]
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("every", [1, 2])
def test_weight_average_is_the_mean_of_the_weights_after_each_sampled_step_from_its_start(every):
    from lmlab.training.averaging import WeightAverage

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    average, seen = WeightAverage(start_step=3, every=every), []
    for step in range(1, 8):
        optimizer.zero_grad()
        net(torch.randn(4, 3)).pow(2).sum().backward()
        optimizer.step()
        average.update(net, step)
        if step >= 3 and (step - 3) % every == 0:
            seen.append([p.detach().clone() for p in net.parameters()])
        assert average.active == (step >= 3)
    assert average.count == len(seen) == (5 if every == 1 else 3)
    for mean, *samples in zip(average.module.parameters(), *seen):
        torch.testing.assert_close(mean, torch.stack(samples).mean(0), rtol=1e-6, atol=1e-7)
    restored = WeightAverage(start_step=3, every=every)
    restored.load_state_dict(average.state_dict(), net)
    torch.testing.assert_close(restored.module.weight, average.module.weight)
    assert restored.count == average.count


def test_a_decayed_average_is_the_uniform_mean_until_its_sample_weight_then_an_exponential_one():
    from lmlab.training.averaging import WeightAverage

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    # every 2 steps with decay 0.75 ** 0.5 per step: each sample weighs 1 - 0.75 = 1/4, so the first four samples
    # are averaged uniformly (1, 1/2, 1/3, 1/4) and each later one takes a quarter
    average, seen = WeightAverage(start_step=3, every=2, decay=0.75 ** 0.5), []
    for step in range(1, 18):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        average.update(net, step)
        if step >= 3 and (step - 3) % 2 == 0:
            seen.append(net.weight.detach().clone())
    assert average.count == len(seen) == 8
    expected = torch.stack(seen[:4]).mean(0) * 0.75 ** 4
    for age, sample in enumerate(reversed(seen[4:])):
        expected += 0.25 * 0.75 ** age * sample
    torch.testing.assert_close(average.module.weight, expected, rtol=1e-5, atol=1e-6)


def test_an_average_decay_without_an_average_trains_raw_weights_and_says_so(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--model", "rnn", "--preset", "smoke", "--out", str(run),
            *tiny(tiny_corpus, "--set", "optim.average_decay=0.999")]
    assert main(args) == 0
    assert "optim.average_decay=0.999 is unused" in capsys.readouterr().err
    assert all("valid_ppl_averaged" not in r for r in rows(run))


def test_an_averaged_run_validates_both_weights_keeps_the_better_and_resumes_exactly(tiny_corpus, tmp_path,
                                                                                    monkeypatch):
    from lmlab.recipes import train as train_recipe

    args = ["train", "--model", "lstm", "--preset", "smoke",
            *tiny(tiny_corpus, "--set", "train.epochs=3", "--set", "optim.average_from=0.2")]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*args, "--out", str(straight)]) == 0
    metrics = rows(straight)
    # the mean starts within epoch 1 (at 20% of 3 epochs' steps): every validation scores both weights
    for r in metrics:
        assert r["valid_ppl"] == pytest.approx(min(r["valid_ppl_raw"], r["valid_ppl_averaged"]), rel=1e-12)
        assert r["weights"] == ("averaged" if r["valid_ppl_averaged"] < r["valid_ppl_raw"] else "raw")
    counts = [r["averaged_samples"] for r in metrics]
    assert counts[0] > 0 and all(a < b for a, b in zip(counts, counts[1:]))  # one more sample every 10 steps
    best = min(metrics, key=lambda r: r["valid_ppl"])
    final = json.loads((straight / "final.json").read_text())
    assert final["best_weights"] == best["weights"]
    assert final["valid_ppl"] == pytest.approx(best["valid_ppl"], rel=1e-6)  # best.pt holds the chosen weights

    real_epoch = train_recipe._train_epoch

    def interrupted_in_epoch_two(run, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(run, epoch)

    monkeypatch.setattr(train_recipe, "_train_epoch", interrupted_in_epoch_two)
    assert main([*args, "--out", str(resumed)]) == 130
    monkeypatch.undo()
    assert main([*args, "--out", str(resumed), "--resume"]) == 0
    for x, y in zip(metrics, rows(resumed), strict=True):  # the mean of epoch 1 came back from last.pt
        for key in ("train_loss", "valid_ppl_raw", "valid_ppl_averaged"):
            assert x[key] == pytest.approx(y[key], rel=1e-6)

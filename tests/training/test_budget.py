"""Time-budgeted training: the plan (steps that fit), its record in config.json, exact replay and resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from lmlab.cli import main
from lmlab.training.budget import steps_that_fit
from lmlab.training.schedule import WarmupDecay


def test_steps_that_fit_count_training_and_one_validation_per_started_epoch():
    steps = steps_that_fit(100, 0.1, 5, 100)  # 650 steps: 65 s + 7 validations (35 s) = 100 s
    assert steps == 650
    assert 0.1 * steps + 5 * -(-steps // 100) <= 100 < 0.1 * (steps + 1) + 5 * -(-(steps + 1) // 100)
    assert steps_that_fit(1, 10, 5, 100) == 1  # never nothing


def test_linear_schedule_decays_to_the_floor_over_the_planned_steps():
    f = WarmupDecay("linear", total_steps=100, warmup=10, min_ratio=0.0)
    assert f(0) == 1 / 11 and f(10) == 1.0 and abs(f(55) - 0.5) < 1e-9 and f(100) == 0.0


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_budget_becomes_recorded_steps_that_replay_the_same_run(tiny_corpus, tmp_path, capsys):
    common = ["train", "--model", "lstm", "--preset", "smoke", "--set", f"data.corpus={tiny_corpus}",
              "--set", "data.max_eval_tokens=0", "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "budget"), "--set", "train.budget_minutes=0.1"]) == 0
    assert "budget 0.1 min:" in capsys.readouterr().err
    config = json.loads((tmp_path / "budget" / "config.json").read_text())
    steps = config["train"]["steps"]
    rows = _rows(tmp_path / "budget")
    assert steps > 0 and rows[-1]["step"] == steps  # ends exactly after the planned steps, validated there
    assert all(r["elapsed_minutes"] > 0 for r in rows) and rows == sorted(rows, key=lambda r: r["elapsed_minutes"])
    assert main([*common, "--out", str(tmp_path / "replay"), "--set", f"train.steps={steps}"]) == 0
    replay = _rows(tmp_path / "replay")
    keys = ("epoch", "step", "train_loss", "valid_loss", "lr")
    assert [{k: r[k] for k in keys} for r in replay] == [{k: r[k] for k in keys} for r in rows]


def test_resume_keeps_the_plan(tiny_corpus, tmp_path, monkeypatch):
    from lmlab.training import checkpoint

    common = ["train", "--model", "lstm", "--preset", "smoke", "--set", f"data.corpus={tiny_corpus}",
              "--set", "data.max_eval_tokens=0", "--threads", "1", "--out", str(tmp_path / "run"),
              "--set", "train.budget_minutes=0.1"]
    real = checkpoint.save

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", interrupted)
    assert main(common) == 130
    planned = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["steps"]
    monkeypatch.setattr(checkpoint, "save", real)
    assert main([*common, "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["steps"] == planned
    assert _rows(tmp_path / "run")[-1]["step"] == planned


def test_a_plan_that_outlasts_its_budget_says_so(tiny_corpus, tmp_path, capsys):
    """The plan is kept when the machine slows down (so the run replays exactly), and the log says by how much."""
    assert main(["train", "--model", "lstm", "--preset", "smoke", "--set", f"data.corpus={tiny_corpus}",
                 "--threads", "1", "--out", str(tmp_path / "run"), "--set", "train.budget_minutes=0.0001",
                 "--set", "train.steps=20"]) == 0
    err = capsys.readouterr().err
    assert "the 20 planned steps took" in err and "of a 0.0001-min budget" in err
    assert json.loads((tmp_path / "run" / "final.json").read_text())["status"] == "finished"
    assert "the machine ran slower" in err


def test_a_plan_that_leaves_its_budget_unused_says_so(tiny_corpus, tmp_path, capsys):
    assert main(["train", "--model", "lstm", "--preset", "smoke", "--set", f"data.corpus={tiny_corpus}",
                 "--threads", "1", "--out", str(tmp_path / "run"), "--set", "train.budget_minutes=5",
                 "--set", "train.steps=5"]) == 0
    assert "the 5 planned steps took 0.0 min of a 5-min budget: the machine ran faster" in capsys.readouterr().err


def test_the_probe_takes_the_median_step_so_a_burst_of_other_work_does_not_shrink_the_plan(monkeypatch):
    """Timed steps of 0.1 s with two of 1 s (the machine busy elsewhere for a moment): the plan sees 0.1 s."""
    from lmlab.training import budget

    durations = iter([0.1] * budget.WARMUP_STEPS + [0.1, 1.0, 0.1, 1.0, 0.1, 0.1, 0.1] + [0.1] * 1000)
    clock = [0.0]

    def step(*args):
        clock[0] += next(durations)
        return torch.zeros(())

    class Family:
        @staticmethod
        def train_batches(*args):
            return [(None, None)] * 2000

    cfg = SimpleNamespace(data=None, train=SimpleNamespace(seed=0), optim=SimpleNamespace(clip=1.0))
    monkeypatch.setattr(budget, "optimizer_step", step)
    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock[0])
    probe = torch.nn.Linear(1, 1)
    assert budget._step_seconds(Family, probe, None, cfg, {"train": None}, None, probe_seconds=10.0) == pytest.approx(0.1)

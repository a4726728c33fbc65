"""Time-budgeted training: the plan (steps that fit), re-plans as the machine's speed changes, their record in
config.json, exact replay and resume."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from lmlab.cli import main
from lmlab.training import budget
from lmlab.training.budget import replanned_steps, steps_that_fit
from lmlab.training.schedule import WarmupDecay


def test_steps_that_fit_count_training_and_one_validation_per_started_epoch():
    steps = steps_that_fit(100, 0.1, 5, 100)  # 650 steps: 65 s + 7 validations (35 s) = 100 s
    assert steps == 650
    assert 0.1 * steps + 5 * -(-steps // 100) <= 100 < 0.1 * (steps + 1) + 5 * -(-(steps + 1) // 100)
    assert steps_that_fit(1, 10, 5, 100) == 1  # never nothing


def test_linear_schedule_decays_to_the_floor_over_the_planned_steps():
    f = WarmupDecay("linear", total_steps=100, warmup=10, min_ratio=0.0)
    assert f(0) == 1 / 11 and f(10) == 1.0 and abs(f(55) - 0.5) < 1e-9 and f(100) == 0.0


def test_a_replan_keeps_the_rate_continuous_and_decays_to_the_floor_at_the_new_end():
    f = WarmupDecay("cosine", total_steps=100, warmup=10, min_ratio=0.1)
    before = [f(k) for k in range(41)]
    f.replan(40, 200)
    assert [f(k) for k in range(41)] == before  # the steps already taken keep their rates
    # the old plan was at its floor (0.1) at step 100; the new one is not
    assert abs(f(41) - f(40)) < 0.01 and f(100) > 0.4 and f(200) == pytest.approx(0.1)
    # progress 1/3 was reached at step 40; halfway through the new remaining steps it is 2/3:
    assert f(120) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))
    assert all(f(k) >= f(k + 1) for k in range(10, 210))  # still decaying, never a jump up
    whole = WarmupDecay("cosine", total_steps=200, warmup=10, min_ratio=0.1, plan=[[0, 100], [40, 200]])
    assert [whole(k) for k in range(220)] == [f(k) for k in range(220)]  # a replay from the record is exact


def test_replanned_steps_follow_the_machine_and_stop_when_the_budget_is_spent():
    # 100 s budget, 34 s spent at step 400 of a 1,000-step plan, epochs of 100 steps, 1 s per validation:
    assert replanned_steps(100, 34, 400, 1000, 0.1, 1.0, 100) is None  # 600 steps + 6 validations = 66 s: it holds
    assert replanned_steps(100, 34, 400, 1008, 0.1, 1.0, 100) is None  # within 2% of the 608 steps left
    slower = replanned_steps(100, 34, 400, 1000, 0.15, 1.0, 100)  # the machine slowed by half
    assert slower == 400 + steps_that_fit(66, 0.15, 1.0, 100) and 700 < slower < 1000
    assert replanned_steps(100, 34, 400, 1000, 0.05, 1.0, 100) > 1000  # faster: more steps
    assert replanned_steps(100, 99.5, 400, 1000, 0.1, 1.0, 100) == 400  # no room for a step and its validation


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
    plan = config["train"]["plan"]  # [[0, probe's steps], ...and any re-plan the machine's speed asked for]
    assert plan[0][0] == 0 and plan[-1][1] == steps
    plan_text = "[" + ",".join(f"[{a},{b}]" for a, b in plan) + "]"
    assert main([*common, "--out", str(tmp_path / "replay"), "--set", f"train.plan={plan_text}"]) == 0
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
    planned = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["plan"]
    monkeypatch.setattr(checkpoint, "save", real)
    assert main([*common, "--resume"]) == 0
    train = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert train["plan"][:len(planned)] == planned  # the recorded plan, not a new probe (re-plans may follow it)
    assert _rows(tmp_path / "run")[-1]["step"] == train["steps"]


def test_an_interrupted_replay_resumes_with_the_command_that_started_it(tiny_corpus, tmp_path, monkeypatch):
    from lmlab.training import checkpoint

    common = ["train", "--model", "lstm", "--preset", "smoke", "--set", f"data.corpus={tiny_corpus}",
              "--set", "data.max_eval_tokens=0", "--threads", "1", "--set", "train.budget_minutes=0.1",
              "--set", "train.plan=[[0,30],[10,24]]"]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    real, saves = checkpoint.save, []

    def interrupted_after_the_first_epoch(*args, **kwargs):
        real(*args, **kwargs)
        saves.append(1)
        if len(saves) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", interrupted_after_the_first_epoch)
    assert main([*common, "--out", str(tmp_path / "run")]) == 130
    assert main([*common, "--out", str(tmp_path / "run"), "--resume"]) == 0
    keys = ("epoch", "step", "train_loss", "valid_loss", "lr")
    whole, resumed = _rows(tmp_path / "whole"), _rows(tmp_path / "run")
    assert whole[-1]["step"] == 24 and len(whole) > 1
    assert [{k: r[k] for k in keys} for r in resumed] == [{k: r[k] for k in keys} for r in whole]


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


def test_a_run_that_diverges_is_not_reported_as_a_fast_machine(tiny_corpus, tmp_path, capsys):
    """A run that stopped on a NaN loss has not spent its plan: the divergence, not the machine, is the news."""
    assert main(["train", "--model", "rnn", "--preset", "smoke", "--set", f"data.corpus={tiny_corpus}",
                 "--threads", "1", "--out", str(tmp_path / "run"), "--set", "train.budget_minutes=5",
                 "--set", "train.steps=20", "--set", "optim.lr=1e38", "--set", "optim.clip=0"]) == 2
    err = capsys.readouterr().err
    assert "diverged" in err and "planned steps took" not in err


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


def _replan_once_to(monkeypatch, extra_steps: int):
    """The machine's speed as the re-plan sees it: after the first epoch, room for ``extra_steps`` more steps."""
    calls = []

    def replanned(budget_seconds, elapsed, step, planned, *args):
        calls.append(step)
        return step + extra_steps if len(calls) == 1 else None

    monkeypatch.setattr(budget, "plan_steps", lambda *args: (30, 0.0))
    monkeypatch.setattr(budget, "replanned_steps", replanned)
    return calls


def test_a_run_re_plans_records_the_change_and_its_record_replays_it_exactly(tiny_corpus, tmp_path, monkeypatch):
    common = ["train", "--model", "lstm", "--preset", "smoke", "--set", f"data.corpus={tiny_corpus}",
              "--set", "data.max_eval_tokens=0", "--set", "optim.schedule=cosine", "--threads", "1"]
    calls = _replan_once_to(monkeypatch, 25)
    assert main([*common, "--out", str(tmp_path / "run"), "--set", "train.budget_minutes=1"]) == 0
    first = calls[0]
    train = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert train["plan"] == [[0, 30], [first, first + 25]] and train["steps"] == first + 25 and train["replan"]
    rows = _rows(tmp_path / "run")
    assert rows[-1]["step"] == first + 25 and rows[0]["planned_steps"] == first + 25
    assert main([*common, "--out", str(tmp_path / "replay"),
                 "--set", f"train.plan=[[0,30],[{first},{first + 25}]]"]) == 0
    assert len(calls) == len(rows) - 1  # the last validation ends the run; the replay did not re-plan at all
    keys = ("epoch", "step", "train_loss", "valid_loss", "lr")
    assert [{k: r[k] for k in keys} for r in _rows(tmp_path / "replay")] == [{k: r[k] for k in keys} for r in rows]
    assert not json.loads((tmp_path / "replay" / "config.json").read_text())["train"]["replan"]


def test_a_spent_budget_ends_the_run_at_that_validation_with_its_best_checkpoint(tiny_corpus, tmp_path, monkeypatch):
    _replan_once_to(monkeypatch, 0)
    assert main(["train", "--model", "lstm", "--preset", "smoke", "--set", f"data.corpus={tiny_corpus}",
                 "--set", "data.max_eval_tokens=0", "--threads", "1", "--out", str(tmp_path / "run"),
                 "--set", "train.budget_minutes=1"]) == 0
    rows = _rows(tmp_path / "run")
    assert len(rows) == 1 and rows[0]["step"] < 30  # one epoch of the 30 planned steps, then the budget was spent
    assert json.loads((tmp_path / "run" / "final.json").read_text())["status"] == "finished"


def test_a_resumed_run_keeps_its_re_plans(tiny_corpus, tmp_path, monkeypatch):
    from lmlab.training import checkpoint

    common = ["train", "--model", "lstm", "--preset", "smoke", "--set", f"data.corpus={tiny_corpus}",
              "--set", "data.max_eval_tokens=0", "--set", "optim.schedule=cosine", "--threads", "1",
              "--out", str(tmp_path / "run"), "--set", "train.budget_minutes=1"]
    calls = _replan_once_to(monkeypatch, 25)
    real = checkpoint.save

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", interrupted)
    assert main(common) == 130  # stopped after the first epoch's checkpoint, which holds the re-plan
    monkeypatch.setattr(checkpoint, "save", real)
    assert main([*common, "--resume"]) == 0
    first = calls[0]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["plan"] == [[0, 30], [first, first + 25]]
    assert _rows(tmp_path / "run")[-1]["step"] == first + 25


def test_a_plan_that_is_not_one_is_a_clear_error(tiny_corpus, tmp_path, capsys):
    common = ["train", "--model", "lstm", "--preset", "smoke", "--set", f"data.corpus={tiny_corpus}", "--threads", "1"]
    for bad in ("[[5,30]]", "[[0,30],[20]]", "[[0,30],[20,40],[10,50]]"):
        assert main([*common, "--out", str(tmp_path / "a"), "--set", f"train.plan={bad}"]) == 2
        assert "is not a plan" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "b"), "--set", "train.plan=[[0,30]]", "--set", "train.steps=20"]) == 2
    assert "disagrees with train.plan" in capsys.readouterr().err


def test_a_recorded_plan_keeps_re_planning_however_often_it_is_read_and_a_given_one_never_re_plans(tmp_path):
    from lmlab.recipes import train
    from lmlab.training import rundir

    rundir.write_json(tmp_path / "config.json", {"train": {"steps": 40, "plan": [[0, 30], [15, 40]], "replan": True}})
    cfg = train.configure("lstm", "cpu")
    train.keep_recorded_plan(cfg, tmp_path)  # a study reads the record to compare configs...
    train.keep_recorded_plan(cfg, tmp_path)  # ...then train.run reads it again on resume
    assert (cfg.train.steps, cfg.train.plan, cfg.train.replan) == (40, [[0, 30], [15, 40]], True)
    given = train.configure("lstm", "cpu", ["train.steps=40"])
    train.keep_recorded_plan(given, tmp_path)
    assert not given.train.replan and given.train.plan == []

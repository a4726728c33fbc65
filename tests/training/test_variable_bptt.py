"""AWD-LSTM's variable BPTT windows (data.variable_bptt): the rate follows each window's length, and a run with
them ends after its planned steps and replays exactly."""

from __future__ import annotations

import json

import torch

from lmlab.cli import main
from lmlab.training.step import optimizer_step


class _Batches:
    def __init__(self, scale):
        self.scale = scale

    @staticmethod
    def loss(model, x, y):
        return ((model(x) - y) ** 2).mean()

    def lr_scale(self, y):
        return self.scale


def test_the_update_runs_at_the_scheduled_rate_times_the_batch_scale_and_leaves_the_rate_alone():
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    moves = {}
    for scale in (1.0, 0.5):
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1)
        before = net.weight.detach().clone()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        optimizer_step(_Batches(scale), net, net, x, y, optimizer, clip=0.0)
        moves[scale] = net.weight.detach() - before
        assert optimizer.param_groups[0]["lr"] == 0.1  # the schedule's rate, restored for the next step
    torch.testing.assert_close(moves[0.5], 0.5 * moves[1.0])


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_with_variable_windows_ends_after_its_planned_steps_and_replays_exactly(tiny_corpus, tmp_path):
    fixed = ["train", "--model", "lstm", "--preset", "smoke", "--set", f"data.corpus={tiny_corpus}",
             "--set", "data.max_eval_tokens=0", "--threads", "1", "--set", "data.bptt=12", "--set", "train.steps=25"]
    variable = [*fixed, "--set", "data.variable_bptt=true"]
    for name, args in (("a", variable), ("b", variable), ("fixed", fixed)):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
    runs = {name: _rows(tmp_path / name) for name in ("a", "b", "fixed")}
    assert runs["a"][-1]["step"] == 25
    keys = ("epoch", "step", "train_loss", "valid_loss")
    assert [{k: r[k] for k in keys} for r in runs["a"]] == [{k: r[k] for k in keys} for r in runs["b"]]
    assert [r["train_loss"] for r in runs["a"]] != [r["train_loss"] for r in runs["fixed"]]

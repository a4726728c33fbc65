"""The scaling study: width overrides build models of the intended size, the power-law fit recovers a known
exponent and only uses the falling side of the U, the summary names the best run."""

from __future__ import annotations

import pytest

from lmlab.config import load_train, to_dict
from lmlab.families import build_model
from lmlab.models import parameter_counts
from lmlab.report.scaling import power_law, summarize, width_overrides


@pytest.mark.parametrize("arch,width", [("lstm", 64), ("rnn", 128), ("transformer", 96)])
def test_width_overrides_change_only_the_width(arch, width):
    cfg = load_train(arch, "cpu", width_overrides(arch, width))
    model = build_model(to_dict(cfg.model), 100)
    if arch == "transformer":
        assert (cfg.model.d_model, cfg.model.d_ff, cfg.model.n_layers) == (width, 4 * width, 4)
    else:
        assert (cfg.model.emb_size, cfg.model.hidden_size, cfg.model.num_layers) == (width, width, 2)
        gates = {"lstm": 4, "rnn": 1}[arch]
        per_layer = gates * width * (2 * width + 2)  # W_ih, W_hh and both biases
        assert parameter_counts(model)["non_embedding"] == 2 * per_layer + 100  # + the decoder bias


def test_power_law_recovers_the_exponent_and_stops_at_the_minimum():
    points = [(n, 500 * n ** -0.25) for n in (1e5, 4e5, 1.6e6)] + [(6.4e6, 1e4)]  # the last: too big for the budget
    fit = power_law(points)
    assert fit["points"] == 3
    assert fit["alpha"] == pytest.approx(0.25, rel=1e-9) and fit["a"] == pytest.approx(500, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    assert power_law(points[:2]) is None and power_law([(1e5, 90.0), (2e5, 80.0), (4e5, 85.0)]) is None


def test_summary_names_the_best_run_per_budget():
    rows = [dict(budget_minutes=b, model=m, width=w, parameters=w * 1000, valid_ppl=p, test_ppl=p - 3)
            for b, m, w, p in [(5, "lstm", 64, 150.0), (5, "lstm", 128, 130.0), (5, "rnn", 64, 170.0),
                               (10, "lstm", 128, 110.0), (10, "transformer", 128, 105.0)]]
    summary = summarize(rows)
    assert summary["5"]["best"]["model"] == "lstm" and summary["5"]["best"]["width"] == 128
    assert summary["10"]["best"]["model"] == "transformer"
    assert summary["5"]["models"]["rnn"] == {"best_width": 64, "best_valid_ppl": 170.0, "power_law": None}

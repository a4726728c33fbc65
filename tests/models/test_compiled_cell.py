"""The from-scratch LSTM's compiled C++ cell (lmlab.models.kernels) against its tensor-operation form: the same
function to rounding, in both passes; and a clear fall-back where it cannot be built. (Against torch.nn.LSTM the
compiled path is what tests/models/test_equivalence.py checks, since it is the default.)"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from lmlab.families import build_model
from lmlab.models import kernels
from lmlab.models.lstm import LSTMLayer

V = 50
LSTM = dict(arch="lstm", impl="scratch", emb_size=16, hidden_size=24, num_layers=2)  # 24-wide, then 16-wide


@pytest.fixture
def compiled_cell():
    if shutil.which("c++") is None and shutil.which("g++") is None:  # (ninja comes with lmlab's dependencies)
        pytest.skip("no C++ compiler on this machine: the compiled cell cannot be built here")
    cell = kernels.lstm_cell()
    assert cell is not None, "the compiled LSTM cell did not build; see the warning above"
    return cell


def two_windows(model, x, y):
    """Loss over two windows with the state carried, so the state's gradient through the boundary enters too."""
    state = model.initial_state(x.size(1), model.encoder.weight)
    first, state = model(x[:5], state)
    second, state = model(x[5:], state)
    logits = torch.cat([first, second])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    return logits, loss + state[-1][1].pow(2).mean()  # the last cell state, as a next window would receive it


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_compiled_cell_computes_the_tensor_operation_cell(compiled_cell, dtype, tol):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, V, (11, 4), generator=g), torch.randint(0, V, (11, 4), generator=g)
    results = []
    for compiled in (True, False):
        torch.manual_seed(0)
        model = build_model(dict(LSTM, compiled_cell=compiled, dropout_layer=0.3, weight_drop=0.2), V).to(dtype)
        torch.manual_seed(2)  # the same dropout masks in both
        logits, loss = two_windows(model.train(), x, y)
        results.append((logits, torch.autograd.grad(loss, list(model.parameters()))))
    (ours, ours_grads), (theirs, theirs_grads) = results
    torch.testing.assert_close(ours, theirs, atol=tol, rtol=tol)
    for (name, _), a, b in zip(model.named_parameters(), ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=name)


def test_compiled_cell_is_finite_and_right_where_exp_would_overflow(compiled_cell):
    """Saturated gates, as a long run meets them: pre-activations up to +-1e4, far past exp's float range. The
    activations, c_t, tanh(c_t) and h_t equal the tensor operations' and nothing is NaN (the plain
    1 / (1 + exp(-x)) under -ffast-math returned NaN below about -44, and a preset hour diverged on it)."""
    from lmlab.models.lstm import _tensor_op_forward_step

    torch.manual_seed(0)
    gates, c_prev = torch.randn(8, 4 * 32) * 3e3, torch.randn(8, 32) * 5
    results = []
    for step in (compiled_cell.forward_step, _tensor_op_forward_step):
        acts, c, tanh_c, h = gates.clone(), torch.empty(8, 32), torch.empty(8, 32), torch.empty(8, 32)
        step(acts, c_prev, c, tanh_c, h)
        results.append((acts, c, tanh_c, h))
    for ours, theirs in zip(*results):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_loading_the_compiled_cell_leaves_denormals_alone(compiled_cell):
    """-ffast-math at link time would set flush-to-zero for the whole process; it is a compile flag only."""
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert (tiny * 1).item() > 0


def test_tensor_operation_cell_gradcheck():
    """test_equivalence's gradcheck runs the default (compiled) cell; this one the tensor operations."""
    torch.manual_seed(0)
    cell = LSTMLayer(3, 4).double()
    cell.compiled_cell = False
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    names = [n for n, _ in cell.named_parameters()]

    def f(inp, h, c, *params):
        out, (h_last, c_last) = torch.func.functional_call(cell, dict(zip(names, params)), (inp, (h, c)))
        return out, h_last, c_last

    assert torch.autograd.gradcheck(f, (x, h0, c0, *cell.parameters()))


def test_a_cell_that_cannot_be_built_falls_back_to_tensor_operations_with_one_warning(monkeypatch, caplog):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    kernels.lstm_cell.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="lmlab"):
            model = build_model(LSTM, V)
            logits, _ = model(torch.randint(0, V, (6, 2)), model.initial_state(2, model.encoder.weight))
            logits.sum().backward()
            model(torch.randint(0, V, (6, 2)), model.initial_state(2, model.encoder.weight))
    finally:
        kernels.lstm_cell.cache_clear()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "Ninja is required" in warnings[0] and "model.compiled_cell=false" in warnings[0]
    assert logits.shape == (6, 2, V) and model.encoder.weight.grad is not None


@pytest.mark.parametrize("options,builds", [(dict(LSTM), 2), (dict(LSTM, compiled_cell=False), 0),
                                            (dict(LSTM, arch="rnn"), 0), (dict(LSTM, impl="nn"), 0)])
def test_train_builds_the_cells_its_layers_will_call_before_the_budget_clock(monkeypatch, options, builds):
    calls = []
    monkeypatch.setattr(kernels, "lstm_cell", lambda: calls.append(1))
    kernels.build_ahead(build_model(options, V))
    assert len(calls) == builds

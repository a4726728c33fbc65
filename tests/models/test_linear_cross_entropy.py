"""The fused output layer + cross-entropy (CPU training) against F.cross_entropy(F.linear(...)): the loss and
every gradient, across chunk boundaries, ignored targets and tied weights, and through each model's
``targets=`` path."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.data.batching import IGNORE
from lmlab.families import build_model
from lmlab.models import linear_cross_entropy as lce


def _plain_and_fused(hidden, weight, bias, targets):
    results = []
    for fn in (lambda *a: F.cross_entropy(F.linear(*a[:3]), a[3], ignore_index=IGNORE), lce.linear_cross_entropy):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
        loss = fn(*leaves, targets)
        (3.0 * loss).backward()  # a non-unit upstream gradient, as when a regulariser or scale follows
        results.append((loss.detach(), [t.grad if t is not None else None for t in leaves]))
    return results


@pytest.mark.parametrize("with_bias", [False, True])
def test_loss_and_gradients_equal_the_two_op_version(with_bias):
    g = torch.Generator().manual_seed(0)
    rows = 2 * lce.CHUNK + 37  # a partial last chunk
    hidden = torch.randn(rows, 24, generator=g)
    weight = torch.randn(300, 24, generator=g) * 0.3
    bias = torch.randn(300, generator=g) if with_bias else None
    targets = torch.randint(0, 300, (rows,), generator=g)
    targets[::7] = IGNORE
    (loss_a, grads_a), (loss_b, grads_b) = _plain_and_fused(hidden, weight, bias, targets)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=0)
    for a, b in zip(grads_a, grads_b):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_without_gradients_it_is_the_plain_loss():
    hidden, weight = torch.randn(10, 4), torch.randn(7, 4)
    targets = torch.randint(0, 7, (10,))
    with torch.no_grad():
        torch.testing.assert_close(lce.linear_cross_entropy(hidden, weight, None, targets),
                                   F.cross_entropy(F.linear(hidden, weight), targets))


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_models_targets_path_matches_logits_path_with_tied_weights(arch):
    cfg = ({"arch": "transformer", "d_model": 16, "n_layers": 2, "n_heads": 4, "d_ff": 32, "context_length": 12,
            "dropout": 0.0, "dropout_emb": 0.0, "tie_weights": True} if arch == "transformer"
           else {"arch": "lstm", "emb_size": 16, "hidden_size": 16, "num_layers": 2, "tie_weights": True})
    torch.manual_seed(0)
    model = build_model({**cfg, "impl": "scratch"}, 50)
    shape = (3, 12) if arch == "transformer" else (9, 3)
    x, y = torch.randint(0, 50, shape), torch.randint(0, 50, shape)

    def run(fused):
        model.zero_grad()
        state = None if arch == "transformer" else model.initial_state(x.size(1), model.encoder.weight)
        args = (x,) if state is None else (x, state)
        if fused:
            out = model(*args, targets=y)
            loss = out if state is None else out[0]
        else:
            out = model(*args)
            logits = out if state is None else out[0]
            loss = F.cross_entropy(logits.reshape(-1, 50), y.reshape(-1))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (loss_a, grads_a), (loss_b, grads_b) = run(False), run(True)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=0)
    for name, grad in grads_a.items():  # the tied embedding gets both its input and its output gradient
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_reused_logits_buffer_serves_calls_of_any_size():
    """The buffer kept between calls grows to the largest chunk and is reused: a larger call, then a smaller one
    (which sees the larger call's stale logits in its buffer), both still equal the two-op version."""
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(300, 24, generator=g) * 0.3
    for rows in (lce.CHUNK + 5, 33):
        hidden = torch.randn(rows, 24, generator=g)
        targets = torch.randint(0, 300, (rows,), generator=g)
        (loss_a, grads_a), (loss_b, grads_b) = _plain_and_fused(hidden, weight, None, targets)
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=0)
        torch.testing.assert_close(grads_b[0], grads_a[0], rtol=1e-5, atol=1e-7)
    buffer = lce._workspace[(torch.device("cpu"), torch.float32)]
    assert buffer.numel() >= lce.CHUNK * 300
    assert lce._logits_buffer(hidden, 4, 300).data_ptr() == buffer.data_ptr()


def test_under_torch_compile_it_equals_the_two_op_version():
    g = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g)
    bias, targets = torch.randn(30, generator=g), torch.randint(0, 30, (40,), generator=g)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss = torch.compile(lambda h, w, b: lce.linear_cross_entropy(h * 1.0, w, b, targets))(*leaves)
    (3.0 * loss).backward()  # as _plain_and_fused
    (plain_loss, plain_grads), _ = _plain_and_fused(hidden, weight, bias, targets)
    torch.testing.assert_close(loss.detach(), plain_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip((t.grad for t in leaves), plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

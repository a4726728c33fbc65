"""Every from-scratch model against its torch.nn twin (llm.c's test_gpt2 idea): same weights in, same
logits, loss, gradients and optimiser steps out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.families import build_model
from lmlab.models.gru import GRULayer
from lmlab.models.lstm import LSTMLayer
from lmlab.models.rnn import ElmanLayer, NormalizedElmanLayer
from lmlab.models.transformer import LayerNorm

V = 50

CONFIGS = {
    "rnn": dict(arch="rnn", emb_size=16, hidden_size=24, num_layers=2),  # tied: a 24-wide layer, then a 16-wide one
    "gru": dict(arch="gru", emb_size=16, hidden_size=16, num_layers=2),
    "lstm": dict(arch="lstm", emb_size=16, hidden_size=16, num_layers=2),
    "transformer": dict(arch="transformer", d_model=16, n_layers=2, n_heads=4, d_ff=32, context_length=12,
                        dropout=0.0, dropout_emb=0.0),
}


def pair(arch, dtype=torch.float64, **extra):
    torch.manual_seed(0)
    scratch = build_model(dict(CONFIGS[arch], impl="scratch", **extra), V).to(dtype)
    twin_cfg = dict(CONFIGS[arch], impl="nn")
    twin = build_model(twin_cfg, V).to(dtype)
    twin.load_state_dict(scratch.state_dict())  # identical parameter names: no mapping needed
    return scratch, twin


def loss_of(model, arch, x, y):
    """Loss over two consecutive windows, carrying the recurrent state, so state handling is compared too."""
    if arch == "transformer":
        logits = model(x)
        return logits, F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    state = model.initial_state(x.size(1), model.encoder.weight)
    first, state = model(x[:4], state)
    second, _ = model(x[4:], state)
    logits = torch.cat([first, second])
    return logits, F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))


def batch(arch):
    g = torch.Generator().manual_seed(1)
    shape = (3, 12) if arch == "transformer" else (9, 3)
    return torch.randint(0, V, shape, generator=g), torch.randint(0, V, shape, generator=g)


@pytest.mark.parametrize("arch", ["rnn", "gru", "lstm", "transformer"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_logits_loss_and_gradients_match_torch_nn(arch, dtype, tol):
    scratch, twin = pair(arch, dtype)
    x, y = batch(arch)
    logits_a, loss_a = loss_of(scratch, arch, x, y)
    logits_b, loss_b = loss_of(twin, arch, x, y)
    torch.testing.assert_close(logits_a, logits_b, atol=tol, rtol=tol)
    torch.testing.assert_close(loss_a, loss_b, atol=tol, rtol=tol)
    loss_a.backward()
    loss_b.backward()
    grads_b = dict(twin.named_parameters())
    for name, p in scratch.named_parameters():
        torch.testing.assert_close(p.grad, grads_b[name].grad, atol=tol, rtol=tol, msg=name)


@pytest.mark.parametrize("arch", ["rnn", "gru", "lstm", "transformer"])
def test_bf16_autocast_trains_with_fp32_gradients_close_to_the_fp32_twin(arch):
    """The ``gpu`` presets train under bf16 autocast; the hand-written recurrent backward passes run outside it,
    so they must get one dtype throughout. (CPU autocast takes the same code path as CUDA's.)"""
    scratch, twin = pair(arch, torch.float32)
    x, y = batch(arch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss_a = loss_of(scratch, arch, x, y)
    _, loss_b = loss_of(twin, arch, x, y)
    loss_a.backward()
    loss_b.backward()
    torch.testing.assert_close(loss_a.float(), loss_b, atol=0, rtol=2e-2)
    grads_b = dict(twin.named_parameters())
    for name, p in scratch.named_parameters():
        assert p.grad.dtype == torch.float32, name
        error = (p.grad - grads_b[name].grad).norm() / grads_b[name].grad.norm()
        assert error < 5e-2, (name, error.item())


@pytest.mark.parametrize("arch", ["rnn", "gru", "lstm", "transformer"])
def test_optimiser_steps_match_torch_nn(arch):
    scratch, twin = pair(arch)
    x, y = batch(arch)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (scratch, twin)]
    for _ in range(3):
        for model, opt in zip((scratch, twin), opts):
            opt.zero_grad()
            loss_of(model, arch, x, y)[1].backward()
            opt.step()
    twin_params = dict(twin.named_parameters())
    for name, p in scratch.named_parameters():
        torch.testing.assert_close(p, twin_params[name], atol=1e-9, rtol=1e-9, msg=name)


def test_tied_recurrent_layers_below_the_last_take_hidden_size_and_the_last_the_embedding_size():
    model = build_model(dict(CONFIGS["lstm"], emb_size=8, hidden_size=12, num_layers=3), V)
    assert [(layer.weight_ih_l0.shape[1], layer.hidden_size) for layer in model.layers] == [(8, 12), (12, 12), (12, 8)]
    assert model.decoder.weight is model.encoder.weight
    untied = build_model(dict(CONFIGS["lstm"], emb_size=8, hidden_size=12, tie_weights=False), V)
    assert untied.decoder.weight.shape == (V, 12)
    with pytest.raises(LmlabError, match="one tied layer needs model.hidden_size == model.emb_size"):
        build_model(dict(CONFIGS["rnn"], num_layers=1), V)


def test_plain_matmul_attention_equals_sdpa():
    torch.manual_seed(0)
    a = build_model(dict(CONFIGS["transformer"], impl="scratch", attn_impl="matmul"), V).double()
    b = build_model(dict(CONFIGS["transformer"], impl="scratch", attn_impl="sdpa"), V).double()
    b.load_state_dict(a.state_dict())
    x, y = batch("transformer")
    la, lb = loss_of(a, "transformer", x, y)[1], loss_of(b, "transformer", x, y)[1]
    torch.testing.assert_close(la, lb, atol=1e-12, rtol=1e-12)
    la.backward()
    lb.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-10, rtol=1e-10, msg=name)


def test_layer_norm_backward_written_by_hand_matches_finite_differences_and_torch_nn():
    torch.manual_seed(0)
    norm = LayerNorm(8).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (torch.randn(3, 5, 8, dtype=torch.float64) * 3 + 1).requires_grad_()
    assert torch.autograd.gradcheck(norm, (x,))
    reference = torch.nn.LayerNorm(8).double()
    reference.load_state_dict(norm.state_dict())
    upstream = torch.randn(3, 5, 8, dtype=torch.float64)
    ours, theirs = norm(x), reference(x)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (x, norm.weight, norm.bias), upstream),
                    torch.autograd.grad(theirs, (x, reference.weight, reference.bias), upstream)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("layer", [ElmanLayer, NormalizedElmanLayer, GRULayer, LSTMLayer])
def test_recurrent_layer_gradcheck(layer):
    """Analytic gradients of our tensor-op cells (each a hand-written backward through time) against finite
    differences: for the inputs, every parameter and a random initial state, through every step's output and the
    last state, as the next window receives it."""
    torch.manual_seed(0)
    cell = layer(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    zero = cell.initial_state(2, x)
    is_pair = isinstance(zero, tuple)  # the LSTM's (h, c)
    state = [torch.randn_like(s).requires_grad_() for s in (zero if is_pair else (zero,))]
    names = [n for n, _ in cell.named_parameters()]

    def f(inp, *rest):
        initial, params = rest[: len(state)], rest[len(state) :]
        out, last = torch.func.functional_call(cell, dict(zip(names, params)),
                                               (inp, tuple(initial) if is_pair else initial[0]))
        return out, *(last if is_pair else (last,))

    assert torch.autograd.gradcheck(f, (x, *state, *cell.parameters()))


def test_layer_normalised_elman_lm_matches_the_loop_written_with_torch_layer_norm():
    """torch.nn has no normalised RNN cell, so the reference is the cell written out under autograd with
    ``F.layer_norm``: tanh(LN(x W_ih^T + b_ih + h W_hh^T + b_hh)). Logits, loss and every gradient over two
    windows with the state carried, in float64."""
    torch.manual_seed(0)
    model = build_model(dict(CONFIGS["rnn"], impl="scratch", layer_norm=True), V).double()
    with torch.no_grad():  # away from the initial gain 1 and shift 0, so both enter the check
        for layer in model.layers:
            layer.norm_weight.uniform_(0.5, 1.5)
            layer.norm_bias.uniform_(-0.3, 0.3)
    x, y = batch("rnn")

    def reference_loss():
        hs = [torch.zeros(x.size(1), layer.hidden_size, dtype=torch.float64) for layer in model.layers]
        logits = []
        for t in range(x.size(0)):
            inp = model.encoder(x[t])
            for k, layer in enumerate(model.layers):
                pre = inp @ layer.weight_ih_l0.t() + layer.bias_ih_l0 + hs[k] @ layer.weight_hh_l0.t() + layer.bias_hh_l0
                hs[k] = inp = torch.tanh(F.layer_norm(pre, (layer.hidden_size,), layer.norm_weight, layer.norm_bias))
            logits.append(model.decoder(inp))
        logits = torch.stack(logits)
        return logits, F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))

    ours, loss = loss_of(model, "rnn", x, y)
    ours_grads = torch.autograd.grad(loss, list(model.parameters()))
    theirs, reference = reference_loss()
    theirs_grads = torch.autograd.grad(reference, list(model.parameters()))
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)
    for (name, _), a, b in zip(model.named_parameters(), ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=name)


@pytest.mark.parametrize("arch,impl", [("lstm", "scratch"), ("gru", "scratch"), ("rnn", "nn")])
def test_layer_norm_on_any_other_recurrent_layer_is_a_clear_error(arch, impl):
    with pytest.raises(LmlabError, match="model.layer_norm=false"):
        build_model(dict(CONFIGS[arch], impl=impl, layer_norm=True), V)


@pytest.mark.parametrize("arch", ["rnn", "gru", "lstm", "transformer"])
def test_changing_a_future_token_never_changes_an_earlier_prediction(arch):
    torch.manual_seed(0)
    model = build_model(dict(CONFIGS[arch], impl="scratch"), V).double().eval()
    x, _ = batch(arch)
    time_dim = 1 if arch == "transformer" else 0
    t = 6
    changed = x.clone()
    changed.select(time_dim, t).copy_((x.select(time_dim, t) + 1) % V)

    def logits(inp):
        return model(inp) if arch == "transformer" else model(inp, model.initial_state(inp.size(1), model.encoder.weight))[0]

    before, after = logits(x), logits(changed)
    # Logits at position i predict token i+1 from tokens <= i: positions before t must not move; t must.
    torch.testing.assert_close(before.narrow(time_dim, 0, t), after.narrow(time_dim, 0, t), atol=0, rtol=0)
    assert not torch.allclose(before.narrow(time_dim, t, 1), after.narrow(time_dim, t, 1))


def test_locked_dropout_shares_one_mask_across_time():
    from lmlab.models.dropout import LockedDropout

    drop = LockedDropout(0.5).train()
    out = drop(torch.ones(7, 3, 10))
    assert torch.equal(out[0], out[6])
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(drop.eval()(torch.ones(2, 2, 2)), torch.ones(2, 2, 2))


@pytest.mark.parametrize("arch", ["rnn", "gru", "lstm", "transformer"])
def test_models_overfit_a_tiny_sequence(arch):
    """A model that cannot memorise 24 tokens has a bug; each reaches near-zero loss in a few hundred steps."""
    torch.manual_seed(0)
    extra = {} if arch == "transformer" else {"tie_weights": False}
    model = build_model(dict(CONFIGS[arch], impl="scratch", **extra), V)
    g = torch.Generator().manual_seed(3)
    seq = torch.randint(0, V, (25,), generator=g)
    x, y = seq[:-1], seq[1:]
    if arch == "transformer":
        x, y = x[:12].view(1, 12), y[:12].view(1, 12)
    else:
        x, y = x.view(-1, 1), y.view(-1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(500):
        logits = model(x) if arch == "transformer" else model(x, model.initial_state(1, model.encoder.weight))[0]
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()

"""AWD-LSTM's regularisers on the from-scratch recurrent models: DropConnect on W_hh equals the torch.nn twin
run with the same masked weight, embedding dropout equals a lookup into the masked embedding matrix, AR/TAR
equal their formulas and reach the gradient but not the logged loss."""

from __future__ import annotations

import pytest
import torch

from lmlab.families import build_model
from lmlab.models.dropout import dropout
from lmlab.training.step import optimizer_step

V = 40


def model(arch, impl="scratch", **extra):
    torch.manual_seed(0)
    return build_model(dict(arch=arch, impl=impl, emb_size=12, hidden_size=12, num_layers=2, **extra), V).double()


def tokens():
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, V, (7, 3), generator=g)


@pytest.mark.parametrize("arch", ["rnn", "gru", "lstm"])
def test_weight_drop_is_the_twin_with_one_masked_recurrent_weight_per_window(arch):
    scratch = model(arch, weight_drop=0.4).train()
    twin = model(arch, impl="nn").train()
    twin.load_state_dict(scratch.state_dict())
    x = tokens()
    torch.manual_seed(7)
    logits, _ = scratch(x, scratch.initial_state(3, scratch.encoder.weight))
    torch.manual_seed(7)  # the same draws, in the same order: one mask per layer per call
    masks = [dropout(torch.ones_like(layer.weight_hh_l0), 0.4) for layer in scratch.layers]
    assert all(0 < (m == 0).sum() < m.numel() for m in masks)
    with torch.no_grad():
        for layer, mask in zip(twin.layers, masks):
            layer.weight_hh_l0.mul_(mask)
    expected, _ = twin(x, twin.initial_state(3, twin.encoder.weight))
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)

    logits.sum().backward()  # dropped weights get no gradient
    for layer, mask in zip(scratch.layers, masks):
        assert torch.all(layer.weight_hh_l0.grad[mask == 0] == 0)

    scratch.eval()  # no mask at evaluation
    twin.load_state_dict(scratch.state_dict())
    torch.testing.assert_close(scratch(x, scratch.initial_state(3, scratch.encoder.weight))[0],
                               twin(x, twin.initial_state(3, twin.encoder.weight))[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["rnn", "gru", "lstm"])
def test_weight_drop_on_the_torch_nn_twins_matches_the_scratch_layers(arch):
    """The nn layers run their fused kernel with the masked W_hh (functional_call): same draws, same logits,
    same gradients as the scratch layers, and the parameter itself is left unmasked."""
    scratch, twin = model(arch, weight_drop=0.4).train(), model(arch, impl="nn", weight_drop=0.4).train()
    twin.load_state_dict(scratch.state_dict())
    x = tokens()
    outputs = []
    for m in (scratch, twin):
        torch.manual_seed(7)
        logits, _ = m(x, m.initial_state(3, m.encoder.weight))
        logits.square().sum().backward()
        outputs.append(logits)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)
    grads = {n: p.grad for n, p in scratch.named_parameters()}
    for name, p in twin.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(twin.state_dict(), scratch.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["scratch", "nn"])
def test_embedding_dropout_is_a_lookup_into_the_matrix_with_whole_words_dropped(impl):
    """AWD-LSTM's embedded_dropout: F.embedding(tokens, W * mask[:, None] / (1 - p)) with one mask over the
    vocabulary per call; gathered per token here, with the same logits and gradients. Untied, so the reference
    can hold the masked matrix as its encoder."""
    dropped = model("lstm", impl, tie_weights=False, dropout_words=0.5).train()
    reference = model("lstm", impl, tie_weights=False).train()
    reference.load_state_dict(dropped.state_dict())
    x = torch.arange(V).view(10, 4) % 13  # 13 word types, each at 3-4 positions
    torch.manual_seed(7)
    logits, _ = dropped(x, dropped.initial_state(4, dropped.encoder.weight))
    torch.manual_seed(7)  # the same draw: one mask over the vocabulary
    keep = dropout(torch.ones(V, dtype=torch.float64), 0.5)
    assert 0 < int((keep[:13] == 0).sum()) < 13
    with torch.no_grad():
        reference.encoder.weight.mul_(keep.unsqueeze(1))
    expected, _ = reference(x, reference.initial_state(4, reference.encoder.weight))
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)

    logits.square().sum().backward()
    expected.square().sum().backward()  # the reference's gradient is w.r.t. the masked matrix: chain rule
    torch.testing.assert_close(dropped.encoder.weight.grad, reference.encoder.weight.grad * keep.unsqueeze(1),
                               rtol=1e-10, atol=1e-10)
    assert torch.all(dropped.encoder.weight.grad[:13][keep[:13] == 0] == 0)  # a dropped word learns nothing

    dropped.eval()  # no mask at evaluation
    reference.load_state_dict(dropped.state_dict())
    reference.eval()
    torch.testing.assert_close(dropped(x, dropped.initial_state(4, dropped.encoder.weight))[0],
                               reference(x, reference.initial_state(4, reference.encoder.weight))[0])


def test_activation_and_temporal_regularisation_follow_their_formulas_and_reach_only_the_gradient():
    net = model("lstm", activation_reg=2.0, temporal_reg=1.0).train()
    x, y = tokens(), tokens()
    outputs = {}
    net.layers[-1].register_forward_hook(lambda m, i, o: outputs.update(raw=o[0]))
    net(x, net.initial_state(3, net.encoder.weight))
    raw = outputs["raw"]  # no dropout configured, so the dropped output is the raw one
    expected = 2.0 * raw.pow(2).mean() + 1.0 * (raw[1:] - raw[:-1]).pow(2).mean()
    torch.testing.assert_close(net.regularization, expected)
    assert net.regularization.item() > 0

    class Batches:  # what a family's training batches offer the step
        @staticmethod
        def loss(m, inputs, targets):
            return m(inputs, m.initial_state(3, m.encoder.weight), targets=targets)[0]

        @staticmethod
        def lr_scale(targets):
            return 1.0

    plain = model("lstm").train()
    regularised = model("lstm", activation_reg=2.0, temporal_reg=1.0).train()
    steps = []
    for net in (plain, regularised):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        steps.append(optimizer_step(Batches, net, net, x, y, optimizer, clip=0.0))
    torch.testing.assert_close(steps[0], steps[1])  # the returned loss is the NLL alone
    moved = [not torch.equal(a, b) for a, b in zip(plain.parameters(), regularised.parameters())]
    assert any(moved)  # ... while the penalty changed the update

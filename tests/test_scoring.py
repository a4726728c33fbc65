"""A family's token_nlls must score every token once, and agree with a direct full-context computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.families import build_model, family_of

V = 30


def full_context_nlls(model, arch, x, y):
    with torch.no_grad():
        if arch == "transformer":
            logits = model(x.view(1, -1))[0]
        else:
            logits = model(x.view(-1, 1), model.initial_state(1, model.encoder.weight))[0][:, 0]
        return F.cross_entropy(logits.double(), y, reduction="none")


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_single_column_or_window_equals_full_context(arch):
    torch.manual_seed(0)
    cfg = (dict(arch="transformer", d_model=8, n_layers=1, n_heads=2, d_ff=16, context_length=40) if arch == "transformer"
           else dict(arch="lstm", emb_size=8, hidden_size=8, num_layers=1))
    model = build_model(dict(cfg, impl="scratch"), V).double().eval()
    x, y = torch.randint(0, V, (37,)), torch.randint(0, V, (37,))
    got = family_of(arch).token_nlls(model, x, y, batch_size=1, bptt=5, stride=1)
    torch.testing.assert_close(got, full_context_nlls(model, arch, x, y))


def test_recurrent_columns_cover_every_token():
    torch.manual_seed(0)
    model = build_model(dict(arch="rnn", impl="scratch", emb_size=8, hidden_size=8, num_layers=1), V).eval()
    x, y = torch.randint(0, V, (101,)), torch.randint(0, V, (101,))
    nll = family_of("rnn").token_nlls(model, x, y, batch_size=7, bptt=4)
    assert nll.numel() == 101 and torch.isfinite(nll).all()


def test_uniform_model_has_perplexity_equal_to_vocabulary_size():
    """A model whose logits are all equal predicts 1/V everywhere: perplexity V exactly (closed form)."""
    model = build_model(dict(arch="transformer", impl="scratch", d_model=8, n_layers=1, n_heads=2, d_ff=16,
                             context_length=16), V).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    x, y = torch.randint(0, V, (50,)), torch.randint(0, V, (50,))
    nll = family_of("transformer").token_nlls(model, x, y, batch_size=4, stride=8)
    assert math.isclose(math.exp(nll.mean().item()), V, rel_tol=1e-9)

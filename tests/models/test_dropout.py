"""The CPU dropout mask drawn four per 64-bit random word: unbiased, the right drop rate in every lane, and
the same gradient as F.dropout's given the same mask."""

import pytest
import torch

from lmlab.models.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.15, 0.3, 0.5])
def test_mask_drops_p_of_the_elements_in_every_lane_and_stays_unbiased(p):
    torch.manual_seed(0)
    keep, scale = keep_mask((250_000, 4), p)
    # Each column is one 16-bit lane of the random words; a lane whose sign bit never varied (random_()'s
    # default range) would drop nothing or everything.
    dropped = 1 - keep.float().mean(0)
    assert torch.allclose(dropped, torch.full((4,), p), atol=0.004), dropped
    assert scale == pytest.approx(1 / (1 - p), rel=1e-4)
    # The realised mean of the scaled mask is 1 within sampling error.
    assert (keep * scale).float().mean().item() == pytest.approx(1.0, abs=0.005)


def test_dropout_values_gradient_and_modes():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.25)
    kept = y != 0
    assert 0.2 < 1 - kept.float().mean().item() < 0.3
    scale = 65536 / (65536 - round(0.25 * 65536))
    torch.testing.assert_close(y[kept], x[kept] * scale)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)  # d(dropout)/dx = the scaled mask, as F.dropout
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0) is x
    layer = Dropout(0.25).eval()
    assert layer(x) is x
    assert torch.equal(dropout(torch.ones(5), 1.0), torch.zeros(5))


def test_mask_is_seeded_by_torch():
    torch.manual_seed(7)
    a = dropout(torch.ones(100), 0.5)
    torch.manual_seed(7)
    assert torch.equal(a, dropout(torch.ones(100), 0.5))

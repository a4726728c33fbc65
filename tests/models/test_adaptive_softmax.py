"""The clustered (adaptive) softmax (lmlab.models.adaptive_softmax) against torch.nn.AdaptiveLogSoftmaxWithLoss set
to the same weights; a normalised distribution; the fused training loss equal to the log-probabilities' mean; and
a run of the CLI that trains, scores and samples with it."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.cli import main
from lmlab.data.batching import IGNORE
from lmlab.errors import LmlabError
from lmlab.families import build_model
from lmlab.models import linear_cross_entropy as lce
from lmlab.models.adaptive_softmax import adaptive_cross_entropy, adaptive_log_probs, check_cutoffs

V, D, CUTOFFS = 50, 8, [10, 30]


def weights(dtype, tail_bias=True):
    g = torch.Generator().manual_seed(0)
    w, wc = torch.randn(V, D, generator=g, dtype=dtype), torch.randn(2, D, generator=g, dtype=dtype)
    b, bc = torch.randn(V, generator=g, dtype=dtype), torch.randn(2, generator=g, dtype=dtype)
    if not tail_bias:  # torch.nn's tail clusters have no bias
        b[CUTOFFS[0]:] = 0
    return [t.requires_grad_() for t in (w, b, wc, bc)]


def torch_reference(w, b, wc, bc):
    """nn.AdaptiveLogSoftmaxWithLoss computing the same distribution: no shrinking (div_value 1), identity
    projections into the tail clusters, which score with our word vectors."""
    ref = torch.nn.AdaptiveLogSoftmaxWithLoss(D, V, CUTOFFS, div_value=1.0, head_bias=True).to(w.dtype)
    with torch.no_grad():
        ref.head.weight.copy_(torch.cat([w[:10], wc]))
        ref.head.bias.copy_(torch.cat([b[:10], bc]))
        for tail, (lo, hi) in zip(ref.tail, [(10, 30), (30, 50)]):
            tail[0].weight.copy_(torch.eye(D, dtype=w.dtype))
            tail[1].weight.copy_(w[lo:hi])
    return ref


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_the_same_distribution_loss_and_gradients_as_torch_nn(dtype, tol):
    w, b, wc, bc = weights(dtype, tail_bias=False)
    ref = torch_reference(w, b, wc, bc)
    hidden = torch.randn(37, D, generator=torch.Generator().manual_seed(1), dtype=dtype, requires_grad=True)
    targets = torch.arange(37) * 7 % V  # every cluster is hit
    close = dict(rtol=tol, atol=tol)
    torch.testing.assert_close(adaptive_log_probs(hidden, w, b, wc, bc, CUTOFFS), ref.log_prob(hidden), **close)

    ours = adaptive_cross_entropy(hidden, w, b, wc, bc, targets, CUTOFFS)  # float32: the fused path
    theirs = ref(hidden, targets).loss
    torch.testing.assert_close(ours, theirs, **close)
    grad_hidden, grad_w, grad_wc, grad_bc = torch.autograd.grad(ours, [hidden, w, wc, bc])
    ref_params = [hidden, ref.head.weight, ref.head.bias, ref.tail[0][1].weight, ref.tail[1][1].weight]
    ref_hidden, ref_head, ref_head_bias, ref_tail0, ref_tail1 = torch.autograd.grad(theirs, ref_params)
    torch.testing.assert_close(grad_hidden, ref_hidden, **close)
    torch.testing.assert_close(grad_w, torch.cat([ref_head[:10], ref_tail0, ref_tail1]), **close)
    torch.testing.assert_close(grad_wc, ref_head[10:], **close)
    torch.testing.assert_close(grad_bc, ref_head_bias[10:], **close)


def test_a_normalised_distribution_whose_mean_negative_log_probability_is_the_training_loss():
    w, b, wc, bc = weights(torch.float32)
    hidden = torch.randn(3, 40, D, requires_grad=True)  # (T, B, D), as the recurrent models hand it over
    targets = torch.randint(V, (3, 40))
    targets[0, :7] = IGNORE
    log_probs = adaptive_log_probs(hidden, w, b, wc, bc, CUTOFFS)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 40))
    reference = torch.nn.functional.cross_entropy(log_probs.reshape(-1, V), targets.reshape(-1), ignore_index=IGNORE)
    fused = adaptive_cross_entropy(hidden, w, b, wc, bc, targets, CUTOFFS)  # float32 + gradients: fused path
    torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-6)
    for ours, theirs in zip(torch.autograd.grad(fused, [hidden, w, b, wc, bc]),
                            torch.autograd.grad(reference, [hidden, w, b, wc, bc])):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("upstream", [1.0, 3.0])
def test_the_one_node_training_loss_equals_the_log_probabilities_mean_across_chunks_and_an_empty_cluster(
        with_bias, upstream, monkeypatch):
    """The CPU training path (one autograd node writing every part's gradient into one word-vector gradient)
    against the log-probabilities scored by F.cross_entropy: loss and gradients, with ignored targets, a tail
    cluster no target falls in, several chunks of rows, and an upstream gradient of 1 (the gradients are handed
    over uncopied) or not."""
    monkeypatch.setattr(lce, "CHUNK", 16)
    w, b, wc, bc = weights(torch.float32)
    if not with_bias:
        b = bc = None
    hidden = torch.randn(70, D, generator=torch.Generator().manual_seed(2), requires_grad=True)
    targets = torch.randint(CUTOFFS[1], generator=torch.Generator().manual_seed(3), size=(70,))  # none in [30, 50)
    targets[::9] = IGNORE
    leaves = [t for t in (hidden, w, b, wc, bc) if t is not None]
    fused = adaptive_cross_entropy(hidden, w, b, wc, bc, targets, CUTOFFS)
    log_probs = adaptive_log_probs(hidden, w, b, wc, bc, CUTOFFS)
    reference = torch.nn.functional.cross_entropy(log_probs, targets, ignore_index=IGNORE)
    torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-6)
    for ours, theirs in zip(torch.autograd.grad(upstream * fused, leaves),
                            torch.autograd.grad(upstream * reference, leaves)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_gradients_accumulate_over_two_backward_passes_of_one_loss():
    """backward() twice (retain_graph): the word vectors' gradient doubles. The first pass hands its stored
    gradient over uncopied only when nothing else holds it."""
    w, b, wc, bc = weights(torch.float32)
    hidden, targets = torch.randn(20, D), torch.arange(20) * 3 % V
    loss = adaptive_cross_entropy(hidden, w, b, wc, bc, targets, CUTOFFS)
    loss.backward(retain_graph=True)
    once = w.grad.clone()
    loss.backward()
    torch.testing.assert_close(w.grad, 2 * once)


MODELS = {"rnn": dict(arch="rnn", emb_size=8, hidden_size=8, num_layers=2),
          "lstm": dict(arch="lstm", emb_size=8, hidden_size=8, num_layers=2),
          "transformer": dict(arch="transformer", d_model=8, n_layers=2, n_heads=2, d_ff=16, context_length=6, dropout=0.0,
                              dropout_emb=0.0)}


@pytest.mark.parametrize("arch", list(MODELS))
def test_a_model_with_clusters_trains_on_the_loss_its_log_probabilities_give(arch):
    torch.manual_seed(0)
    options = dict(MODELS[arch], impl="scratch", output_cutoffs=CUTOFFS)
    model = build_model(options, V)
    plain = build_model(dict(options, output_cutoffs=[]), V)
    biases = arch != "transformer"  # the Transformer's output layer has none
    assert (sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
            == len(CUTOFFS) * (D + biases))
    x, y = torch.randint(V, (6, 4)), torch.randint(V, (6, 4))
    if arch == "transformer":
        loss, log_probs = model(x, targets=y), model(x)
    else:
        loss, _ = model(x, model.initial_state(4, model.encoder.weight), targets=y)
        log_probs, _ = model(x, model.initial_state(4, model.encoder.weight))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(log_probs.reshape(-1, V), y.reshape(-1)))


@pytest.mark.parametrize("cutoffs", [[0], [10, 10], [30, 10], [-5], [60, 40]])
def test_cutoffs_that_do_not_rise_from_above_zero_are_a_one_line_error(cutoffs):
    with pytest.raises(LmlabError, match="output_cutoffs"):
        check_cutoffs(cutoffs, V)


def test_cutoffs_past_a_small_vocabulary_leave_it_the_full_softmax():
    """A preset's [2000] on a corpus of fewer words: the clusters past the vocabulary are dropped."""
    assert check_cutoffs([10, 30, 60], V) == [10, 30] and check_cutoffs([V], V) == []
    model = build_model(dict(MODELS["lstm"], impl="scratch", output_cutoffs=[2000]), V)
    assert model.clusters is None


def test_train_score_and_sample_with_a_clustered_softmax(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "lstm", "--preset", "smoke", "--out", str(run), "--set", f"data.corpus={tiny_corpus}",
                 "--set", "data.max_eval_tokens=0", "--set", "train.epochs=6", "--set", "model.output_cutoffs=[6]"]) == 0
    final = json.loads((run / "final.json").read_text())
    # a 14-word grammar with three choices per slot: learnt, far below uniform (14); the full softmax: 2.91
    assert final["valid_ppl"] < 4 and final["test_ppl"] < 4
    assert main(["sample", str(run), "--prompt", "the cat", "--max-tokens", "5"]) == 0
    assert "the cat" in capsys.readouterr().out

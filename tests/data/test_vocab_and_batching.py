from __future__ import annotations

import pytest
import torch

from lmlab.data.batching import (
    IGNORE,
    batchify,
    batchify_padded,
    bptt_windows,
    context_windows,
    lm_pairs,
    sliding_windows,
)
from lmlab.data.vocab import EOS, UNK, Vocabulary, read_words
from lmlab.data.word_corpus import load_word_corpus


def test_ptb_counts_and_vocabulary_match_the_standard_setup(ptb_available):
    corpus = load_word_corpus("ptb")
    assert len(corpus.vocab) == 10_000
    assert {s: ids.numel() for s, ids in corpus.splits.items()} == {"train": 929_589, "valid": 73_760, "test": 82_430}
    # PTB already maps rare words to <unk>: nothing in valid/test is outside the training vocabulary.
    assert corpus.oov_counts == {"train": 0, "valid": 0, "test": 0}


def test_words_get_eos_per_line_and_unknown_words_map_to_unk(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a b\n\nb c a\n")
    words = read_words(path)
    assert words == ["a", "b", EOS, EOS, "b", "c", "a", EOS]
    vocab = Vocabulary.build(words)
    assert vocab.itos[:2] == [EOS, "a"]  # most frequent first, ties by spelling
    ids = vocab.encode(["a", "zebra"])
    assert vocab.decode(ids) == ["a", UNK]
    vocab.save(tmp_path / "v.txt")
    assert Vocabulary.load(tmp_path / "v.txt").itos == vocab.itos


def test_lm_pairs_give_one_target_per_token():
    ids = torch.tensor([5, 6, 7])
    inputs, targets = lm_pairs(ids, eos_id=0)
    assert inputs.tolist() == [0, 5, 6] and targets.tolist() == [5, 6, 7]


def test_batchify_makes_contiguous_columns():
    x = torch.arange(11)
    xs, ys = batchify(x, x + 100, 2)
    assert xs.shape == (5, 2)
    assert xs[:, 0].tolist() == [0, 1, 2, 3, 4] and xs[:, 1].tolist() == [5, 6, 7, 8, 9]
    assert list(bptt_windows(5, 2)) == [(0, 2), (2, 2), (4, 1)]


def _variable(total, seed):
    return list(bptt_windows(total, 35, torch.Generator().manual_seed(seed)))


def test_variable_bptt_windows_cover_the_stream_once_and_move_the_cuts_from_epoch_to_epoch():
    total = 100_000
    windows = _variable(total, 1)
    starts = [start for start, _ in windows]
    lengths = [length for _, length in windows]
    assert starts == [0, *torch.tensor(lengths[:-1]).cumsum(0).tolist()] and sum(lengths) == total
    assert min(lengths[:-1]) >= 5  # (only the last window may be cut shorter by the stream's end)
    # N(35, 5) truncated to an integer, and N(17.5, 5) one time in twenty: a mean of about 33.6
    assert 33.0 < sum(lengths) / len(lengths) < 34.3
    assert 0.02 < sum(length < 26 for length in lengths) / len(lengths) < 0.09
    assert _variable(total, 1) == windows  # the same draw from the same seed (a replay, a resume)
    cuts, other_cuts = set(starts), {start for start, _ in _variable(total, 2)}
    assert len(cuts & other_cuts) < 0.1 * len(cuts)  # another epoch cuts the stream elsewhere


def test_padded_batches_hold_every_target_exactly_once():
    x = torch.arange(11)
    xs, ys = batchify_padded(x, x, 3)
    kept = ys.t().reshape(-1)
    assert kept[kept != IGNORE].tolist() == list(range(11))


@pytest.mark.parametrize("n,context,stride", [(50, 8, 4), (50, 8, 1), (50, 8, 8), (5, 8, 4), (64, 16, 5)])
def test_sliding_windows_score_each_target_once_with_enough_context(n, context, stride):
    x = torch.arange(n)
    xs, ys = sliding_windows(x, x, context, stride)
    scored = ys[ys != IGNORE]
    assert scored.tolist() == list(range(n))
    for window_x, window_y in zip(xs, ys):
        positions = (window_y != IGNORE).nonzero().flatten()
        first = int(window_x[0])
        for p in positions.tolist():
            target = int(window_y[p])
            assert target - first == p  # the window is contiguous
            assert p >= min(target, context - stride)  # left context: all of it, or at least context - stride


def test_context_windows_are_non_overlapping():
    x = torch.arange(20)
    xs, ys = context_windows(x, x + 1, 6, offset=2)
    assert xs.tolist() == [[2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15, 16, 17, 18, 19]]

import torch

from sparsetrain import scores


def test_select_lowest_and_highest_only_among_candidates():
    s = torch.tensor([5.0, 1.0, 3.0, 0.5, 4.0, 2.0])
    cand = torch.tensor([True, True, True, False, True, True])
    low = scores.select_lowest(s, cand, 2)
    assert low.tolist() == [False, True, False, False, False, True]
    high = scores.select_highest(s, ~cand, 1)
    assert high.tolist() == [False, False, False, True, False, False]
    assert scores.select_highest(s, cand, 0).sum() == 0


def test_signed_drop_takes_half_from_each_sign():
    w = torch.tensor([0.1, 0.5, -0.05, -0.9, 0.2, -0.3, 0.0])
    active = torch.tensor([True, True, True, True, True, True, False])
    d = scores.signed_drop(w, active, 4)
    # smallest positives 0.1, 0.2; largest negatives -0.05, -0.3
    assert d.tolist() == [True, False, True, False, True, True, False]


def test_signed_drop_fills_from_other_sign_when_one_runs_out():
    w = torch.tensor([0.1, 0.2, -0.3, -0.4, -0.5])
    active = torch.ones(5, dtype=torch.bool)
    d = scores.signed_drop(w, active, 3)
    assert int(d.sum()) == 3
    w2 = torch.tensor([0.3, 0.1, 0.2, -0.4])
    assert int(scores.signed_drop(w2, torch.ones(4, dtype=torch.bool), 4).sum()) == 4


def test_random_scores_reproducible_per_seed():
    like = torch.empty(3, 4)
    a = scores.random_scores(like, torch.Generator().manual_seed(3))
    b = scores.random_scores(like, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == like.shape

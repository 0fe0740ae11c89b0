import pytest
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


@pytest.mark.parametrize("n,k", [(1000, 10), (300_000, 5), (300_000, 20_000), (1 << 20, 100_000), (1 << 20, 200_000)])
def test_topk_large_picks_the_same_entries_as_topk(n, k):
    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(n, generator=g)
    x[torch.randperm(n, generator=g)[: n // 3]] = float("-inf")  # masked positions, as in growth
    v, i = scores.topk_large(x, k)
    ref = torch.topk(x, k).indices
    assert torch.equal(torch.sort(i).values, torch.sort(ref).values) and torch.equal(v, x[i])
    # with a floor only entries above it qualify, at most k of them
    floor = float(torch.topk(x, k // 2 + 1).values[-1])
    v, i = scores.topk_large(x, k, floor=floor)
    assert i.numel() == k // 2 and bool((v > floor).all())


def test_topk_large_falls_back_when_the_sample_misleads():
    # the strided sample sees only the largest value: too few entries pass its threshold, so the
    # plain topk runs and the result is still exact
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1 << 20, generator=g)
    x[:: (1 << 20) // 65536] = 10.0
    v, i = scores.topk_large(x, 100_000)
    assert torch.equal(torch.sort(i).values, torch.sort(torch.topk(x, 100_000).indices).values)


@pytest.mark.parametrize("largest", [True, False])
def test_selection_over_many_candidates_is_the_exact_top_k(largest):
    # growth over most of a large layer goes through topk_large: the same set as torch.topk
    g = torch.Generator().manual_seed(1)
    s = torch.randn(700, 600, generator=g)
    candidates = torch.rand(700, 600, generator=g) < 0.9
    k = 30_000
    picked = (scores.select_highest if largest else scores.select_lowest)(s, candidates, k)
    fill = float("-inf") if largest else float("inf")
    ref = torch.topk(s.masked_fill(~candidates, fill).reshape(-1), k, largest=largest).indices
    expected = torch.zeros(700 * 600, dtype=torch.bool)
    expected[ref] = True
    assert torch.equal(picked.reshape(-1), expected) and int(picked.sum()) == k
    assert not bool((picked & ~candidates).any())

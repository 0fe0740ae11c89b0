"""The selection machinery of streaming gradient growth against plain dense rankings.

``top_gradient_positions`` ranks a layer's free positions block of rows by block of rows with
thresholds (an estimate of the k-th best score, then a running floor) and ranks a block again
where an estimate turned out too high; ``kth_largest`` and ``_above`` are its helpers, ``_merge``
builds the new pattern of a streaming update. Each is checked against ``torch.topk`` /
``torch.kthvalue`` / a sort on layers large enough to take every path.
"""

from types import SimpleNamespace

import pytest
import torch

from sparsetrain import scores
from sparsetrain.bits import PackedBits
from sparsetrain.sparse import LowRankGrad
from sparsetrain.storage import streaming


def _layer(grad, out_f, in_f):
    return SimpleNamespace(name="w", shape=torch.Size((out_f, in_f)), numel=out_f * in_f, grad_buffer=grad)


def _grad(out_f, in_f, seed, row_scale=None, batch=8):
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(out_f, batch, generator=g)
    if row_scale is not None:
        gy *= row_scale.unsqueeze(1)
    return LowRankGrad(gy, torch.randn(batch, in_f, generator=g))


def _taken(numel, count, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(numel, generator=g)[:count]).values


def _dense_top(grad, taken, k, score=None):
    s = grad.dense().abs().reshape(-1)
    a = s.clone()
    if score is not None:
        s = score(s.clone(), 0, s.numel())
    s[taken] = float("-inf")
    top = torch.topk(s, k).indices
    avail = torch.ones(s.numel(), dtype=torch.bool)
    avail[taken] = False
    exploit = float(a[top].mean()) / float(a[avail].mean())
    return torch.sort(top).values, exploit


@pytest.mark.parametrize("block,k", [(1 << 30, 40), (1 << 30, 3000), (2000, 25), (2000, 2500), (2000, 12000),
                                     (6000, 900), (700, 5)])
def test_top_gradient_positions_are_the_dense_top_k(monkeypatch, block, k):
    monkeypatch.setattr(streaming, "GRADIENT_BLOCK", block)
    out_f, in_f = 160, 250
    grad = _grad(out_f, in_f, seed=k)
    taken = _taken(out_f * in_f, 4000, seed=1)
    got, exploit = streaming.top_gradient_positions(_layer(grad, out_f, in_f), taken, k)
    ref, ref_exploit = _dense_top(grad, taken, k)
    assert torch.equal(got, ref)  # sorted, distinct, none taken: the same set
    assert exploit == pytest.approx(ref_exploit, rel=1e-5)


def test_a_custom_score_ranks_the_same_set(monkeypatch):
    monkeypatch.setattr(streaming, "GRADIENT_BLOCK", 3000)
    out_f, in_f = 120, 300
    grad = _grad(out_f, in_f, seed=5)
    taken = _taken(out_f * in_f, 3000, seed=2)
    bonus = torch.rand(out_f * in_f, generator=torch.Generator().manual_seed(3))

    def score(g, start, stop):  # a new tensor, as DST-EE's acquisition
        return g * 0.5 + 0.2 * bonus[start:stop]

    got, exploit = streaming.top_gradient_positions(_layer(grad, out_f, in_f), taken, 1500, score)
    ref, ref_exploit = _dense_top(grad, taken, 1500, score)
    assert torch.equal(got, ref)
    assert exploit == pytest.approx(ref_exploit, rel=1e-5)  # of |g|, not of the score


def test_blocks_ranked_above_the_final_kth_score_are_ranked_again(monkeypatch):
    # the first rows' gradients are far above the rest: the first blocks' estimate of the k-th best
    # score is too high, their thresholds too, and they must be ranked again (the gradient formed
    # again, or the last block's kept in memory) for the exact result
    monkeypatch.setattr(streaming, "GRADIENT_BLOCK", 2000)
    out_f, in_f = 200, 100
    row_scale = torch.ones(out_f)
    row_scale[:20] = 50.0
    grad = _grad(out_f, in_f, seed=7, row_scale=row_scale)
    taken = _taken(out_f * in_f, 1500, seed=3)
    formed = []
    rows = streaming._block_rows
    monkeypatch.setattr(streaming, "_block_rows", lambda g, r0, r1, out: formed.append(r0) or rows(g, r0, r1, out))
    k = 4000  # more than the first rows hold
    got, exploit = streaming.top_gradient_positions(_layer(grad, out_f, in_f), taken, k)
    ref, ref_exploit = _dense_top(grad, taken, k)
    assert torch.equal(got, ref)
    assert exploit == pytest.approx(ref_exploit, rel=1e-5)
    assert len(formed) > out_f // 20  # some blocks twice
    # a single block ranked again from memory
    formed.clear()
    monkeypatch.setattr(streaming, "GRADIENT_BLOCK", 1 << 30)
    monkeypatch.setattr(streaming, "_MARGIN_ONE", 0.05)
    got, _ = streaming.top_gradient_positions(_layer(grad, out_f, in_f), taken, k)
    assert torch.equal(got, ref) and formed == [0]


def test_fully_taken_blocks_and_nothing_to_grow(monkeypatch):
    monkeypatch.setattr(streaming, "GRADIENT_BLOCK", 1000)
    out_f, in_f = 100, 100
    grad = _grad(out_f, in_f, seed=13)
    taken = torch.unique(torch.cat([torch.arange(2000), _taken(out_f * in_f, 900, seed=5)]))  # blocks 0 and 1
    layer = _layer(grad, out_f, in_f)
    got, exploit = streaming.top_gradient_positions(layer, taken, 700)
    ref, ref_exploit = _dense_top(grad, taken, 700)
    assert torch.equal(got, ref) and exploit == pytest.approx(ref_exploit, rel=1e-5)
    got, exploit = streaming.top_gradient_positions(layer, taken, 0)
    assert got.numel() == 0 and exploit is None
    # a float64 gradient is formed the plain way (no float32 buffer to reuse)
    grad64 = LowRankGrad(grad.factors[0][0].double(), grad.factors[0][1].double())
    got, _ = streaming.top_gradient_positions(_layer(grad64, out_f, in_f), taken, 700)
    assert torch.equal(got, ref)


def test_exact_ties_and_too_few_nonzero_scores(monkeypatch):
    # dead rows: exact zeros, more positions wanted than nonzero scores exist; any choice among the
    # tied zeros is right, the nonzero ones must all be chosen
    monkeypatch.setattr(streaming, "GRADIENT_BLOCK", 1500)
    out_f, in_f = 90, 100
    row_scale = torch.zeros(out_f)
    row_scale[::9] = 1.0
    grad = _grad(out_f, in_f, seed=11, row_scale=row_scale)
    taken = _taken(out_f * in_f, 500, seed=4)
    k = 1500
    got, _ = streaming.top_gradient_positions(_layer(grad, out_f, in_f), taken, k)
    dense = grad.dense().abs().reshape(-1)
    assert got.numel() == k and torch.equal(got, torch.unique(got))
    assert not bool(torch.isin(got, taken).any())
    nonzero = (dense > 0).nonzero().squeeze(1)
    nonzero = nonzero[~torch.isin(nonzero, taken)]
    assert nonzero.numel() < k and bool(torch.isin(nonzero, got).all())


def test_gradient_blocks_form_the_rows_of_the_gradient_bit_for_bit(monkeypatch):
    monkeypatch.setattr(streaming, "GRADIENT_BLOCK", 700)
    g = torch.Generator().manual_seed(0)
    two = (LowRankGrad(torch.randn(37, 5, generator=g), torch.randn(5, 60, generator=g))
           + LowRankGrad(torch.randn(37, 3, generator=g), torch.randn(3, 60, generator=g))) * 0.37
    dense = torch.randn(37, 60, generator=g)
    for grad in (two, dense):
        layer = _layer(grad, 37, 60)
        seen = []
        for lo, hi, block in streaming.gradient_blocks(layer):
            r0, r1 = lo // 60, hi // 60
            ref = grad.rows(r0, r1).abs() if isinstance(grad, LowRankGrad) else grad[r0:r1].abs()
            assert torch.equal(block, ref.reshape(-1))
            seen.append(r0)
        assert seen == list(range(0, 37, 11))
        again = [(lo, block.clone()) for lo, _, block in streaming.gradient_blocks(layer, [22, 0])]
        assert [lo for lo, _ in again] == [22 * 60, 0]


@pytest.mark.parametrize("n,k", [(10, 1), (10, 10), (70_000, 1), (70_000, 35_000), (70_000, 70_000),
                                 (300_000, 200), (300_000, 290_000)])
def test_kth_largest_is_kthvalue(n, k):
    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(n, generator=g)
    x[torch.randperm(n, generator=g)[: n // 4]] = float("-inf")
    x[torch.randperm(n, generator=g)[: n // 5]] = 0.5  # many exact ties
    assert scores.kth_largest(x, k) == float(torch.kthvalue(x, n - k + 1).values)
    # a sample that misleads: the largest values sit exactly on the sample's stride
    y = torch.rand(n, generator=g)
    y[:: max(1, n // 8192)] = 10.0
    assert scores.kth_largest(y, k) == float(torch.kthvalue(y, n - k + 1).values)
    with pytest.raises(ValueError):
        scores.kth_largest(x, n + 1)


@pytest.mark.parametrize("rate", [0.0005, 0.01, 0.2, 0.9])
def test_above_is_the_plain_comparison(rate):
    g = torch.Generator().manual_seed(int(rate * 1e4))
    s = torch.rand(100_003, generator=g)  # not a multiple of the chunk: a tail
    s[torch.randperm(s.numel(), generator=g)[:5000]] = float("-inf")
    t = float(torch.quantile(s[torch.isfinite(s)], 1 - rate))
    assert torch.equal(streaming._above(s, t), (s > t).nonzero().squeeze(1))
    assert torch.equal(streaming._above(s, float("-inf")), (s > float("-inf")).nonzero().squeeze(1))


@pytest.mark.parametrize("seed", range(4))
def test_merge_builds_the_sorted_union_and_where_each_entry_was(seed):
    g = torch.Generator().manual_seed(seed)
    numel = 5000
    flat = torch.sort(torch.randperm(numel, generator=g)[:800]).values
    dropped = torch.rand(800, generator=g) < 0.3
    keep_at = (~dropped).nonzero().squeeze(1)
    kept = flat[keep_at]
    free = torch.ones(numel, dtype=torch.bool)
    free[kept] = False
    grown = torch.sort(free.nonzero().squeeze(1)[torch.randperm(int(free.sum()), generator=g)[:400]]).values
    grown = torch.unique(torch.cat([grown, flat[dropped][:50]]))  # some dropped positions regrown
    new_flat, source, regrown = streaming._merge(flat, dropped, keep_at, kept, grown)
    assert torch.equal(regrown, torch.isin(grown, flat))
    assert torch.equal(new_flat, torch.sort(torch.cat([kept, grown])).values)
    old = {int(p): i for i, p in enumerate(flat)}
    expected = [old.get(p, -1) for p in new_flat.tolist()]
    assert source.tolist() == expected


def test_packed_bits_add_sorted_or_repeated_positions():
    a = PackedBits(100)
    assert a.add(torch.tensor([3, 9, 10, 64])) == 4
    assert a.add(torch.tensor([64, 5, 5, 3, 99, 99])) == 2
    assert a.count == 6 == a.popcount()
    assert a.positions().tolist() == [3, 5, 9, 10, 64, 99]
    assert a.test(torch.tensor([[3, 4], [99, 98]])).tolist() == [[True, False], [True, False]]

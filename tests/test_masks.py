import torch

from sparsetrain.masks import LayerState, random_mask


def test_random_mask_exact_count_and_reproducible():
    g = torch.Generator().manual_seed(0)
    m = random_mask(torch.Size([7, 9]), 20, g)
    assert m.dtype == torch.bool and m.shape == (7, 9) and int(m.sum()) == 20
    m2 = random_mask(torch.Size([7, 9]), 20, torch.Generator().manual_seed(0))
    assert torch.equal(m, m2)
    assert int(random_mask(torch.Size([3]), 5, g).sum()) == 3
    assert int(random_mask(torch.Size([3]), 0, g).sum()) == 0


def _layer(mask):
    p = torch.nn.Parameter(torch.randn(mask.shape))
    return LayerState("w", p, 0.5, int(mask.sum()), mask, mask.clone(),
                      counter=torch.zeros(mask.shape, dtype=torch.int32))


def test_lazy_counter_flush_is_exact():
    mask = torch.tensor([True, False, True, False])
    layer = _layer(mask)
    layer.flush(5)
    assert layer.counter.tolist() == [5, 0, 5, 0] and layer.active_steps == 10
    layer.flush(5)  # idempotent
    assert layer.counter.tolist() == [5, 0, 5, 0]
    layer.set_mask(torch.tensor([False, True, True, False]))
    layer.flush(8)
    assert layer.counter.tolist() == [5, 3, 8, 0] and layer.active_steps == 16


def test_sampling_from_an_index_set_equals_sampling_from_a_bool_tensor():
    from sparsetrain.masks import in_sorted, sample_free_positions, sample_positions

    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        numel = 5000
        taken = torch.rand(numel, generator=g) < 0.4
        index = taken.nonzero().squeeze(1)
        count = 2000 + 100 * seed
        a = sample_positions(numel, count, torch.Generator().manual_seed(seed), taken.clone())
        b = sample_free_positions(numel, count, torch.Generator().manual_seed(seed), index)
        assert torch.equal(a, b) and not bool(taken[b].any()) and torch.unique(b).numel() == count
        assert torch.equal(in_sorted(index, torch.arange(numel)), taken)
    assert not bool(in_sorted(torch.empty(0, dtype=torch.int64), torch.arange(3)).any())


def test_random_positions_are_the_random_masks_positions():
    from sparsetrain.masks import LARGE_LAYER, random_positions

    for numel, count in ((500, 120), (LARGE_LAYER + 7, 3000), (LARGE_LAYER + 7, LARGE_LAYER - 50)):
        a = random_positions(numel, count, torch.Generator().manual_seed(4))
        b = random_mask(torch.Size([numel]), count, torch.Generator().manual_seed(4)).nonzero().squeeze(1)
        assert torch.equal(a, b) and a.numel() == count

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

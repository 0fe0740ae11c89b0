"""PackedBits: one bit per position, checked against a dense bool tensor."""

import pytest
import torch

from sparsetrain.bits import PackedBits


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 64, 1001])
def test_packed_bits_follow_a_dense_bool_tensor(numel):
    g = torch.Generator().manual_seed(numel)
    ref = torch.rand(numel, generator=g) < 0.3
    bits = PackedBits.from_bool(ref)
    assert bits.data.dtype == torch.uint8 and bits.data.numel() == (numel + 7) // 8
    assert torch.equal(bits.to_bool(), ref) and bits.count == bits.popcount() == int(ref.sum())
    assert torch.equal(bits.positions(), ref.nonzero().squeeze(1))
    for _ in range(5):
        pos = torch.randint(0, numel, (numel // 3 + 2,), generator=g)  # repeats included
        probe = torch.randint(0, numel, (50,), generator=g)
        assert torch.equal(bits.test(probe), ref[probe])
        expected_new = int((~ref[torch.unique(pos)]).sum())
        assert bits.add(pos) == expected_new
        ref[pos] = True
        assert torch.equal(bits.to_bool(), ref) and bits.count == bits.popcount() == int(ref.sum())
    assert torch.equal(PackedBits.from_positions(numel, ref.nonzero().squeeze(1)).data, bits.data)
    twin = bits.clone()
    twin.add(torch.arange(numel))
    assert twin.count == numel and bits.count == int(ref.sum())  # a clone is independent


def test_packed_bits_refuse_bytes_of_the_wrong_size():
    with pytest.raises(ValueError):
        PackedBits(17, torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(ValueError):
        PackedBits(16, torch.zeros(2, dtype=torch.int32))

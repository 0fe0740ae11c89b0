"""sparsetrain._util: one rule for run points, global top-k, value parsing, atomic writes."""

import pytest
import torch

from sparsetrain._util import atomic_save, atomic_write_text, global_topk, parse_value, to_step


def test_to_step_reads_fractions_steps_and_refuses_nonsense():
    assert to_step(None, 100, "end") is None
    assert to_step(0, None, "start") == 0 and to_step(0.0, None, "start") == 0
    assert to_step(0.75, 1000, "end") == 750 and to_step(1.0, 10, "end") == 10
    assert to_step(1, None, "end") == 1 and to_step(250, None, "end") == 250 and to_step(3.0, None, "end") == 3
    with pytest.raises(ValueError, match="total_steps"):
        to_step(0.5, None, "end")
    for bad in (1.5, -1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="end"):
            to_step(bad, 100, "end")


def test_global_topk_picks_exactly_k_across_tensors_and_keeps_shapes():
    a = torch.tensor([[5.0, 1.0], [0.0, 3.0]])
    b = torch.tensor([4.0, 2.0, float("-inf")])
    top = global_topk([a, b], 3)
    assert [t.shape for t in top] == [a.shape, b.shape]
    assert top[0].tolist() == [[True, False], [False, True]] and top[1].tolist() == [True, False, False]
    low = global_topk([a, b], 2, largest=False)
    assert int(low[0].sum()) + int(low[1].sum()) == 2 and bool(low[1][2]) and bool(low[0][1, 0])
    assert [int(t.sum()) for t in global_topk([a, b], 0)] == [0, 0]
    with pytest.raises(ValueError):
        global_topk([a], 5)


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("1e-3") == 1e-3
    assert parse_value("true") is True and parse_value("False") is False and parse_value("none") is None
    assert parse_value(" ucb ") == "ucb"


def test_atomic_writes_leave_no_temporary(tmp_path):
    p = atomic_save({"x": torch.ones(2)}, tmp_path / "a.pt")
    assert torch.equal(torch.load(p, weights_only=True)["x"], torch.ones(2))
    atomic_write_text("hello", tmp_path / "b.txt")
    assert (tmp_path / "b.txt").read_text() == "hello"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.pt", "b.txt"]

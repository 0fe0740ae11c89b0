import math

import pytest

from sparsetrain import schedules as S


def test_rigl_cosine_values():
    c = S.Cosine(0.3)
    assert c.fraction(0, 750, 1000) == pytest.approx(0.3)
    assert c.fraction(375, 750, 1000) == pytest.approx(0.15)
    assert c.fraction(750, 750, 1000) == pytest.approx(0.0)


def test_cosine_annealing_values():
    c = S.CosineAnnealing(0.5, 0.005)
    assert c.fraction(0, None, 1000) == pytest.approx(0.5)
    assert c.fraction(500, None, 1000) == pytest.approx(0.005 + 0.495 / 2)
    assert c.fraction(1000, None, 1000) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="total_steps"):
        c.fraction(10, None, None)


def test_constant_linear_and_names():
    assert S.make_drop_schedule(0.2, "constant").fraction(123, None, None) == 0.2
    lin = S.make_drop_schedule(0.4, "linear")
    assert lin.fraction(50, 100, 200) == pytest.approx(0.2)
    assert isinstance(S.make_drop_schedule(0.3, "cosine"), S.Cosine)
    with pytest.raises(ValueError, match="cosine, cosine_annealing, constant, linear"):
        S.make_drop_schedule(0.3, "exp")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        S.make_drop_schedule(1.3, "constant")


def test_update_steps_follow_interval_and_end():
    u = S.UpdateSchedule(interval=100, end=0.75)
    steps = [t for t in range(1, 1001) if u.is_update_step(t, 1000)]
    assert steps == [100, 200, 300, 400, 500, 600, 700]
    u2 = S.UpdateSchedule(interval=100, end=None, start=250)
    assert [t for t in range(1, 701) if u2.is_update_step(t, None)] == [300, 400, 500, 600, 700]
    u3 = S.UpdateSchedule(interval=10, end=35)  # absolute end step
    assert [t for t in range(1, 100) if u3.is_update_step(t, None)] == [10, 20, 30]
    with pytest.raises(ValueError, match="total_steps"):
        u.end_step(None)
    with pytest.raises(ValueError, match="positive"):
        S.UpdateSchedule(interval=0)

"""The schedule and the per-layer budgets."""

import pytest
import torch

from pdprune import Schedule
from pdprune.functional import global_magnitude_budgets, keep_count


def test_linear_ramp_in_steps():
    s = Schedule(total_steps=100, warmup=10, ramp=20)
    assert [s.progress(i) for i in (0, 9)] == [0.0, 0.0]
    assert s.progress(10) == pytest.approx(1 / 20)
    assert s.progress(19) == pytest.approx(10 / 20)
    assert s.progress(29) == 1.0 and s.progress(99) == 1.0


def test_fractions_of_training():
    s = Schedule(total_steps=200, warmup=0.1, ramp=0.5)
    assert (s.warmup_steps, s.ramp_steps) == (20, 100)


def test_cubic_ramp_prunes_early():
    lin = Schedule(total_steps=100, warmup=0, ramp=50)
    cub = Schedule(total_steps=100, warmup=0, ramp=50, shape="cubic")
    for step in range(0, 49):
        assert cub.progress(step) >= lin.progress(step)
    assert cub.progress(49) == 1.0
    assert all(cub.progress(i + 1) >= cub.progress(i) for i in range(99))


def test_zero_ramp_prunes_at_once():
    s = Schedule(total_steps=10, warmup=3, ramp=0)
    assert s.progress(2) == 0.0 and s.progress(3) == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 10, "warmup": 8, "ramp": 5}, "exceed total_steps"),
        ({"total_steps": 10, "warmup": 1.5}, "fraction"),
        ({"total_steps": 10, "ramp": -1}, ">= 0"),
        ({"total_steps": 10, "shape": "exp"}, "linear"),
    ],
)
def test_bad_schedules_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)


def test_global_budgets_hit_the_overall_target_and_follow_magnitudes():
    torch.manual_seed(0)
    small, large = 0.01 * torch.randn(100, 100), 1.0 * torch.randn(50, 40)
    budgets = global_magnitude_budgets([small, large], 0.9)
    kept = sum(keep_count(w.numel(), r) for w, r in zip([small, large], budgets))
    assert kept == keep_count(12000, 0.9)
    assert budgets[0] > 0.99 and budgets[1] < 0.6


def test_global_budgets_respect_fixed_layers():
    torch.manual_seed(0)
    weights = [torch.randn(100), torch.randn(300), torch.randn(600)]
    budgets = global_magnitude_budgets(weights, 0.8, fixed=[0.5, None, None])
    assert budgets[0] == 0.5
    kept = sum(keep_count(w.numel(), r) for w, r in zip(weights, budgets))
    assert kept == keep_count(1000, 0.8)


def test_impossible_overrides_are_explained():
    with pytest.raises(ValueError, match="loosen the overrides"):
        global_magnitude_budgets([torch.randn(100), torch.randn(10)], 0.95, fixed=[0.0, None])

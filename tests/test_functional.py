"""The pure PDP maths: thresholds, soft masks, hardening."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pdprune.functional import (
    check_finite,
    hard_mask,
    keep_count,
    midpoint_threshold,
    soft_mask,
    soft_masked_weight,
)

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)
sparsities = st.floats(0.0, 0.999, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(shape=shapes, sparsity=sparsities, seed=st.integers(0, 2**31 - 1))
def test_hard_mask_keeps_exact_count(shape, sparsity, seed):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    mask = hard_mask(weight, sparsity)
    assert mask.shape == weight.shape and mask.dtype == torch.bool
    assert int(mask.sum()) == keep_count(weight.numel(), sparsity)


@settings(max_examples=100, deadline=None)
@given(shape=shapes, sparsity=sparsities, levels=st.integers(1, 3), seed=st.integers(0, 1000))
def test_hard_mask_exact_and_deterministic_under_ties(shape, sparsity, levels, seed):
    # Few distinct magnitudes force many ties at the cut.
    g = torch.Generator().manual_seed(seed)
    weight = torch.randint(-levels, levels + 1, shape, generator=g).float()
    first, second = hard_mask(weight, sparsity), hard_mask(weight.clone(), sparsity)
    assert torch.equal(first, second)
    assert int(first.sum()) == keep_count(weight.numel(), sparsity)
    kept, dropped = weight.abs()[first], weight.abs()[~first]
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()


@settings(max_examples=100, deadline=None)
@given(shape=shapes, sparsity=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
def test_soft_mask_agrees_with_hard_mask_at_half(shape, sparsity, seed):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    magnitudes = weight.abs().flatten().sort().values
    if magnitudes.numel() > 1 and (magnitudes[1:] == magnitudes[:-1]).any():
        return  # ties: the hard mask breaks them by position, the soft one cannot
    t = midpoint_threshold(weight, sparsity)
    soft = soft_mask(weight, t, tau=1e-4)
    assert torch.equal(soft >= 0.5, hard_mask(weight, sparsity))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 1000), tau=st.floats(1e-6, 1e-1))
def test_soft_mask_is_monotone_in_magnitude(seed, tau):
    weight = torch.randn(200, generator=torch.Generator().manual_seed(seed))
    mask = soft_mask(weight, midpoint_threshold(weight, 0.7), tau)
    order = weight.abs().argsort()
    assert bool((mask[order][1:] >= mask[order][:-1]).all())
    assert torch.allclose(mask, soft_mask(-weight, midpoint_threshold(weight, 0.7), tau))


def test_threshold_is_midpoint_of_neighbours_at_cut():
    weight = torch.tensor([0.1, -0.5, 0.3, -0.2, 0.9, 0.05, 0.7, -0.4, 0.6, 0.8])
    # sparsity 0.6 keeps 4: 0.9, 0.8, 0.7, 0.6 -> a(k)=0.6, a(k+1)=0.5
    assert float(midpoint_threshold(weight, 0.6)) == pytest.approx(0.55)
    t = midpoint_threshold(weight, 0.6)
    half = soft_mask(torch.tensor([0.55, -0.55]), t, tau=1e-3)
    assert torch.allclose(half, torch.full((2,), 0.5))


def test_zero_sparsity_means_no_mask():
    weight = torch.randn(7, 5)
    assert float(midpoint_threshold(weight, 0.0)) == 0.0
    assert bool(hard_mask(weight, 0.0).all())
    assert keep_count(35, 0.0) == 35


def test_threshold_carries_no_gradient():
    weight = torch.randn(50, requires_grad=True)
    t = midpoint_threshold(weight, 0.5)
    assert not t.requires_grad


@pytest.mark.parametrize("tau", [1e-5, 1e-4, 1e-2])
def test_gradient_matches_analytic_formula(tau):
    torch.manual_seed(0)
    weight = (0.05 * torch.randn(300, dtype=torch.float64)).requires_grad_()
    t = midpoint_threshold(weight, 0.8)
    # float64 weight: compute the mask maths in float64 too for a tight comparison
    w = weight
    m = torch.sigmoid((w.abs() - t.double()) * (w.abs() + t.double()) / tau)
    (m * w).sum().backward()
    with torch.no_grad():
        expected = m * (1 + 2 * w**2 * (1 - m) / tau)
    assert torch.allclose(weight.grad, expected, rtol=1e-9, atol=1e-12)

    weight32 = weight.detach().float().requires_grad_()
    soft_masked_weight(weight32, midpoint_threshold(weight32, 0.8), tau).sum().backward()
    assert torch.allclose(weight32.grad.double(), expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tau", [1e-8, 1e-6, 1e-4, 1e-2, 1.0])
@pytest.mark.parametrize("scale", [1e-4, 1.0, 100.0])
def test_no_nan_or_inf_across_dtypes_and_temperatures(dtype, tau, scale):
    torch.manual_seed(0)
    weight = (scale * torch.randn(64, 33)).to(dtype).requires_grad_()
    t = midpoint_threshold(weight, 0.9)
    mask = soft_mask(weight, t, tau)
    assert mask.dtype == torch.float32
    assert bool(torch.isfinite(mask).all())
    out = soft_masked_weight(weight, t, tau)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert bool(torch.isfinite(weight.grad.float()).all())


def test_huge_bf16_weights_do_not_overflow_the_mask():
    weight = torch.tensor([3e38, -3e38, 1.0, 0.5], dtype=torch.bfloat16)
    mask = soft_mask(weight, midpoint_threshold(weight, 0.5), 1e-8)
    assert bool(torch.isfinite(mask).all())
    assert mask.tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_raise_clear_error(bad):
    weight = torch.randn(10)
    weight[3] = bad
    with pytest.raises(FloatingPointError, match=r"NaN or infinite.*learning rate"):
        midpoint_threshold(weight, 0.5)
    with pytest.raises(FloatingPointError):
        hard_mask(weight, 0.5)
    with pytest.raises(FloatingPointError):
        check_finite(weight)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_out_of_range_is_rejected(sparsity):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        keep_count(10, sparsity)


def test_keep_count_rounds_and_keeps_at_least_one():
    assert keep_count(1000, 0.9) == 100
    assert keep_count(10, 0.99) == 1
    assert keep_count(3, 0.5) == 2  # round(1.5) -> 2 (banker's rounding)
    assert all(keep_count(n, r) >= 1 for n in range(1, 50) for r in (0.5, 0.9, 0.999))
    assert math.isclose(1 - keep_count(4096, 0.9) / 4096, 0.9, abs_tol=1 / 4096)


def test_mask_never_produces_denormal_values():
    # Denormal floats make CPU matmuls many times slower; far below t the mask is exactly 0.
    tiny = torch.finfo(torch.float32).tiny
    weight = torch.cat([torch.linspace(-0.3, 0.3, 10001), torch.tensor([1e-30, -1e-20, 0.0])])
    for tau in (1e-6, 1e-4, 1e-2):
        t = midpoint_threshold(weight, 0.9)
        mask = soft_mask(weight, t, tau)
        masked = soft_masked_weight(weight, t, tau)
        for values in (mask, masked):
            assert not bool(((values != 0) & (values.abs() < tiny)).any())
        if t * t / tau > 60:  # sigmoid(-t^2/tau) is far below float32 resolution there
            assert float(mask[weight.abs() < 1e-3].max()) == 0.0


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(2, 400),
    sparsity=st.floats(0.0, 0.999),
    hint_scale=st.one_of(st.none(), st.floats(0.0, 3.0)),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_threshold_hint_never_changes_the_result(size, sparsity, hint_scale, ties, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(size, generator=g)
    if ties:
        weight = (weight * 4).round() / 4  # many equal magnitudes, also at the cut
    reference = midpoint_threshold(weight, sparsity)
    hint = None if hint_scale is None else float(reference) * hint_scale
    assert torch.equal(midpoint_threshold(weight, sparsity, hint=hint), reference)


def test_threshold_hint_near_the_answer_is_used_and_exact(monkeypatch):
    torch.manual_seed(0)
    weight = torch.randn(100_000)
    reference = midpoint_threshold(weight, 0.9)
    sizes = []
    real_topk = torch.topk
    monkeypatch.setattr(torch, "topk", lambda x, k, **kw: (sizes.append(x.numel()), real_topk(x, k, **kw))[1])
    assert torch.equal(midpoint_threshold(weight, 0.9, hint=float(reference) * 1.01), reference)
    assert sizes and max(sizes) < 5_000  # a narrow band, not the whole tensor


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(2, 400),
    levels=st.sampled_from([1, 3, None]),
    sparsity=st.floats(0.0, 0.999),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**16),
)
def test_threshold_equals_the_midpoint_of_the_sorted_magnitudes(size, levels, sparsity, dtype, seed):
    """Whatever selection finds a(k) and a(k+1) (a quickselect on CPU), they are the k-th and
    (k+1)-th of the magnitudes sorted, ties and all."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(size, generator=generator)
    if levels is not None:
        weight = torch.randint(-levels, levels + 1, (size,), generator=generator).float() / levels
    weight = weight.to(dtype)
    k = keep_count(size, sparsity)
    ranked = weight.abs().float().sort(descending=True).values
    expected = 0.0 if k >= size else 0.5 * (ranked[k - 1] + ranked[k])
    assert torch.equal(midpoint_threshold(weight, sparsity), torch.as_tensor(expected, dtype=torch.float32))

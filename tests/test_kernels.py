"""Fused mask kernels: the eager kernels' values, gradients and counts; chosen and refused as documented."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pdprune
from pdprune import kernels
from pdprune.functional import EAGER_KERNELS, midpoint_threshold, nm_threshold, soft_masked_weight
from pdprune.kernels import MIN_FUSED_NUMEL, fused_kernels, kernels_for

_WHY_NOT = kernels._self_check(torch.device("cpu"), torch.float32)
pytestmark = pytest.mark.skipif(
    _WHY_NOT is not None,
    reason=(
        f"fused kernels do not compile here ({_WHY_NOT}): torch.compile needs a C++ compiler (apt-get "
        "install g++)"
    ),
)


def _run(k, weight: torch.Tensor, t: torch.Tensor, tau: float, grad: torch.Tensor):
    w = weight.clone().requires_grad_(True)
    out = soft_masked_weight(w, t, tau, k)
    out.backward(grad)
    return out.detach(), w.grad, k.count(weight, t) if t.dim() == 0 else None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((48, 64), "unstructured"),
        ((16, 8, 3, 3), "unstructured"),
        ((300,), "unstructured"),
        ((48, 64), "2:4"),
        ((16, 8, 3, 3), "2:4"),
    ],
)
def test_fused_kernels_match_eager_ones(dtype, shape, pattern):
    torch.manual_seed(0)
    weight = (0.05 * torch.randn(shape)).to(dtype)
    t = midpoint_threshold(weight, 0.8) if pattern == "unstructured" else nm_threshold(weight, 2, 4)
    grad = torch.randn(shape).to(dtype)
    fused = _run(fused_kernels(), weight, t, 1e-4, grad)
    eager = _run(EAGER_KERNELS, weight, t, 1e-4, grad)
    assert fused[0].dtype == dtype and fused[1].dtype == dtype
    tolerance = 2e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(fused[0].float(), eager[0].float(), rtol=tolerance, atol=tolerance * 0.05)
    scale = float(eager[1].float().abs().max())
    assert torch.allclose(fused[1].float(), eager[1].float(), rtol=tolerance, atol=tolerance * scale)
    assert fused[2] == eager[2]


def test_fused_kernels_take_non_contiguous_weights():
    torch.manual_seed(0)
    weight = (0.05 * torch.randn(32, 48)).t()
    t = midpoint_threshold(weight, 0.5)
    grad = torch.randn(weight.shape)
    fused, eager = _run(fused_kernels(), weight, t, 1e-3, grad), _run(EAGER_KERNELS, weight, t, 1e-3, grad)
    assert fused[0].shape == weight.shape
    assert torch.allclose(fused[0], eager[0], rtol=2e-5, atol=1e-7)
    assert torch.allclose(fused[1], eager[1], rtol=2e-5, atol=1e-6)


def test_fused_kernels_give_no_nan_for_huge_weights():
    weight = torch.tensor([3e38, -3e38, 1.0, 0.5, 2e19, 1e-30], dtype=torch.float32, requires_grad=True)
    t = midpoint_threshold(weight, 0.5)
    out = soft_masked_weight(weight, t, 1e-8, fused_kernels())
    out.sum().backward()
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(weight.grad).all())
    assert torch.equal(out, weight.detach() * torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0]))


def test_fused_count_reports_non_finite_weights():
    weight = torch.tensor([1.0, float("nan"), 0.1, 2.0])
    assert fused_kernels().count(weight, torch.tensor(0.5)) == (2, False)
    assert EAGER_KERNELS.count(weight, torch.tensor(0.5)) == (2, False)
    assert fused_kernels().count(torch.tensor([1.0, -3.0, 0.1]), torch.tensor(0.5)) == (2, True)


def test_fused_gradient_passes_gradcheck():
    torch.manual_seed(0)
    weight = (0.05 * torch.randn(6, 8, dtype=torch.float64)).requires_grad_()
    t = midpoint_threshold(weight, 0.5)
    fused = fused_kernels()
    assert torch.autograd.gradcheck(
        lambda w: soft_masked_weight(w, t, 1e-2, fused), (weight,), eps=1e-4, atol=1e-3, rtol=1e-3
    )


def test_auto_fuses_large_layers_only_and_eager_never():
    small, large = torch.zeros(16, 16), torch.zeros(MIN_FUSED_NUMEL)
    assert kernels_for(small, "auto") is EAGER_KERNELS
    assert kernels_for(large, "auto").name == "fused"
    assert kernels_for(small, "fused").name == "fused"
    assert kernels_for(large, "eager") is EAGER_KERNELS


def test_a_compiler_that_fails_warns_under_auto_and_raises_under_fused(monkeypatch):
    monkeypatch.setattr(kernels, "_checked", {})
    monkeypatch.setattr(kernels, "_warned", set())
    monkeypatch.setattr(kernels, "_self_check", lambda device, dtype: "CalledProcessError: no C++ compiler")
    large = torch.zeros(MIN_FUSED_NUMEL)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler.*same results"):
        assert kernels_for(large, "auto") is EAGER_KERNELS
    with pytest.raises(RuntimeError, match=r"kernels='fused'.*no C\+\+ compiler.*kernels='eager'"):
        kernels_for(large, "fused")


def test_pdp_rejects_unknown_kernels():
    with pytest.raises(ValueError, match="kernels must be one of"):
        pdprune.PDP(kernels="triton")


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(2, 3000),
    sparsity=st.floats(0.0, 0.999),
    hint_scale=st.floats(0.0, 3.0),
    ties=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_fused_band_search_gives_the_exact_threshold(size, sparsity, hint_scale, ties, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(size, generator=g)
    if ties:
        weight = (weight * 4).round() / 4  # many equal magnitudes, also at the cut and on the edges
    weight = weight.to(dtype)
    reference = midpoint_threshold(weight, sparsity)
    assert torch.equal(
        midpoint_threshold(weight, sparsity, hint=float(reference) * hint_scale, kernels=fused_kernels()),
        reference,
    )


def test_fused_band_search_is_used_near_the_answer_and_selects_from_the_band_only(monkeypatch):
    torch.manual_seed(0)
    weight = torch.randn(200, 500)
    reference = midpoint_threshold(weight, 0.9)
    sizes = []
    real_topk = torch.topk
    monkeypatch.setattr(torch, "topk", lambda x, k, **kw: (sizes.append(x.numel()), real_topk(x, k, **kw))[1])
    assert torch.equal(
        midpoint_threshold(weight, 0.9, hint=float(reference) * 1.01, kernels=fused_kernels()), reference
    )
    assert sizes and max(sizes) < 2_000  # the band (about 1% of the weights), not all 100,000


def test_fused_band_search_falls_back_to_the_full_selection_when_its_kernels_disagree():
    torch.manual_seed(0)
    weight = torch.randn(10_000)
    reference = midpoint_threshold(weight, 0.8)
    fused = fused_kernels()
    lying = dataclasses.replace(fused, in_band=lambda w, low, high: torch.zeros(w.numel(), dtype=torch.uint8))
    assert torch.equal(midpoint_threshold(weight, 0.8, hint=float(reference), kernels=lying), reference)
    failing = dataclasses.replace(fused, counts_above=lambda w, edges: None)
    assert torch.equal(midpoint_threshold(weight, 0.8, hint=float(reference), kernels=failing), reference)


def test_fused_band_search_catches_nan_weights():
    weight = torch.randn(5_000)
    reference = float(midpoint_threshold(weight, 0.5))
    weight[1234] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        midpoint_threshold(weight, 0.5, hint=reference, kernels=fused_kernels())


def test_pdp_layers_of_fused_size_select_t_exactly_through_the_band_search(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
    config = pdprune.PruneConfig(
        sparsity=0.9, schedule=pdprune.Schedule(total_steps=6, warmup=0, ramp=0.5), include=[r"^0$"]
    )
    pruner = pdprune.prepare(model, config)
    called = []
    real_call = kernels._call
    monkeypatch.setattr(
        kernels, "_call", lambda name, *args: (called.append(name), real_call(name, *args))[1]
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    name, target = next(iter(pruner.targets.items()))
    for _ in range(4):
        model(torch.randn(8, 1024)).square().mean().backward()
        t = pruner.config.method.threshold(model[0].weight, target, pruner.state[name])
        assert torch.equal(t, midpoint_threshold(model[0].weight, target.sparsity))
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
    assert "counts_above" in called and "in_band" in called


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_fused_kernels_match_eager_ones_with_a_temperature_on_the_device(pattern):
    # relative_tau hands the kernels a 0-d tensor, not a float: same results as the float path.
    torch.manual_seed(0)
    weight = 0.05 * torch.randn(48, 64)
    t = midpoint_threshold(weight, 0.8) if pattern == "unstructured" else nm_threshold(weight, 2, 4)
    grad = torch.randn(48, 64)
    tau = torch.tensor(3e-4)
    fused = _run(fused_kernels(), weight, t, tau, grad)
    eager = _run(EAGER_KERNELS, weight, t, tau, grad)
    as_float = _run(EAGER_KERNELS, weight, t, 3e-4, grad)
    for a, b in ((fused, eager), (eager, as_float)):
        assert torch.allclose(a[0], b[0], rtol=2e-5, atol=1e-7)
        assert torch.allclose(a[1], b[1], rtol=2e-5, atol=2e-5 * float(b[1].abs().max()))

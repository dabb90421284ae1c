"""A threshold reused or moved by counts keeps its count within the stated tolerance at every step;
tolerance 0 selects t exactly at every step; hardening is exact either way."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pdprune
from pdprune.functional import hard_mask, keep_count, midpoint_threshold, threshold_by_counts


def _count(weight: torch.Tensor):
    return lambda t: int((weight.abs() > t).sum())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    sparsity=st.floats(0.3, 0.97),
    shift=st.floats(-0.05, 0.05),
    scale=st.sampled_from([1e-3, 0.02, 1.0]),
)
def test_count_search_lands_within_slack_or_gives_up(seed, sparsity, shift, scale):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(20_000, generator=generator) * scale
    n = weight.numel()
    start = midpoint_threshold(weight, sparsity)
    target = keep_count(n, min(0.99, max(0.0, sparsity + shift)))
    found = threshold_by_counts(
        _count(weight), n, target, slack=5, start=(start, _count(weight)(start)), elasticity=0.4
    )
    if found is not None:
        t, kept, elasticity = found
        assert t.dtype == torch.float32 and kept == _count(weight)(t)
        assert abs(kept - target) <= 5 and elasticity > 0


def test_count_search_gives_up_when_counts_do_not_move():
    flat = torch.ones(1000)
    t = torch.tensor(0.5)
    assert threshold_by_counts(_count(flat), 1000, 500, 1, (t, 1000), 0.4) is None
    assert threshold_by_counts(_count(flat), 1000, 500, 1, (torch.tensor(0.0), 1000), 0.4) is None


def _train(tolerance: float, steps: int = 40, check=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    config = pdprune.PruneConfig(
        sparsity=0.9,
        schedule=pdprune.Schedule(total_steps=steps, warmup=2, ramp=15),
        budget="uniform",
        method=pdprune.PDP(threshold_tolerance=tolerance),
    )
    pruner = pdprune.prepare(model, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _step in range(steps):
        x = torch.randn(32, 64)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (32,)))
        if check is not None:
            check(pruner)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
    return model, pruner


def test_every_step_keeps_the_target_count_within_the_tolerance():
    tolerance = 2e-2
    worst = []

    def check(pruner):
        for name, layer in pruner.targets.items():
            if layer.sparsity == 0.0:
                continue
            weight = layer.parameter.detach()
            # the t this step's forward used (cached within the step)
            t = pruner.config.method.threshold(weight, layer, pruner.state[name])
            kept = int((weight.abs() > t).sum())
            target = keep_count(weight.numel(), layer.sparsity)
            worst.append(abs(kept - target) / min(target, weight.numel() - target))

    _, pruner = _train(tolerance, check=check)
    assert worst and max(worst) <= tolerance
    states = list(pruner.state.values())
    # Every path was taken: exact selections, reuse, and moves by counts during the ramp.
    assert sum(s.reused for s in states) > 0
    assert sum(s.searched for s in states) > 0
    assert sum(s.computed for s in states) >= len(states)
    assert max(s.max_deviation for s in states) <= tolerance


def test_tolerance_zero_selects_t_exactly_at_every_step():
    def check(pruner):
        for name, target in pruner.targets.items():
            weight = target.parameter.detach()
            if target.sparsity:
                t = pruner.config.method.threshold(weight, target, pruner.state[name])
                assert torch.equal(t, midpoint_threshold(weight, target.sparsity))

    _, pruner = _train(0.0, check=check)
    assert all(s.reused == 0 and s.searched == 0 for s in pruner.state.values())


def test_hardening_is_exact_whatever_the_tolerance():
    _model, pruner = _train(1e-2)
    weights = {name: target.parameter.detach().clone() for name, target in pruner.targets.items()}
    pruner.finalize()
    for name, weight in weights.items():
        expected = hard_mask(weight, pruner.targets[name].sparsity)
        assert torch.equal(pruner.targets[name].parameter.detach() != 0, expected & (weight != 0))


def test_non_finite_weights_are_caught_while_t_is_reused():
    model, pruner = _train(1e-2, steps=40)
    assert any(s.reusable is not None for s in pruner.state.values())
    with torch.no_grad():
        model[0].weight[3, 3] = float("nan")
    with pytest.raises(FloatingPointError, match=r"0\.weight.*NaN"):
        model(torch.randn(2, 64))


@pytest.mark.parametrize("bad", [-0.1, 0.5, float("nan"), "0.01", True])
def test_tolerance_outside_its_range_is_refused(bad):
    with pytest.raises(ValueError, match=r"threshold_tolerance must be a number in \[0, 0\.5\)"):
        pdprune.PDP(threshold_tolerance=bad)


def test_fingerprint_lists_the_tolerance_but_not_the_kernels():
    default = {"name": "pdp", "threshold_tolerance": 0.0}
    assert pdprune.PDP().fingerprint() == default
    assert pdprune.PDP(threshold_tolerance=0).fingerprint() == default
    assert (
        pdprune.PDP(kernels="eager").fingerprint() == default
    )  # speed only: a run may resume without a compiler
    assert pdprune.PDP(threshold_tolerance=1e-2).fingerprint() == {**default, "threshold_tolerance": 0.01}
    assert pdprune.PDP(threshold_tolerance=1e-2).fingerprint() != pdprune.PDP().fingerprint()


def test_checkpoint_from_another_tolerance_is_refused():
    _, pruner = _train(1e-2, steps=20)
    state = pruner.state_dict()
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    other = pdprune.prepare(
        model,
        pdprune.PruneConfig(
            sparsity=0.9, schedule=pdprune.Schedule(total_steps=20, warmup=2, ramp=15), budget="uniform"
        ),
    )
    with pytest.raises(ValueError, match="threshold_tolerance"):
        other.load_state_dict(state)

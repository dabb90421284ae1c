"""Magnitude baselines under the pruner's schedule, budgets and checkpoints."""

import pytest
import torch

import pdprune
from pdprune.baselines import GMP, OneShot
from pdprune.functional import keep_count
from tests.helpers import config, mlp, train_steps


def _zeros(model):
    return {n: int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight")}


def test_gmp_refreshes_masks_every_k_steps_during_the_ramp():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=60, warmup=10, ramp=30, method=GMP(refresh_every=10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    seen = []
    for step in range(60):
        train_steps(model, pruner, opt, step, step + 1)
        seen.append(pruner.state["2.weight"].sparsity)
    # seen[i] is after i + 1 steps. Refreshed when pruning starts (step 10), every 10 steps, then
    # once the ramp reaches the budget (its 30th step: step 39)
    changes = [i + 1 for i in range(1, 60) if seen[i] != seen[i - 1]]
    assert changes == [10, 20, 30, 39]
    assert pruner.state["2.weight"].sparsity == pytest.approx(pruner.budgets["2.weight"])
    # pruned weights are zero in the stored weights, not only in forward
    assert _zeros(model)["2.weight"] == 4096 - keep_count(4096, pruner.budgets["2.weight"])
    report = pruner.finalize()
    assert report.achieved_sparsity == pytest.approx(0.9, abs=0.005)


def test_gmp_default_follows_the_schedule_in_a_short_run():
    # A short fine-tune (a 30-step ramp): the default (100 refreshes over the ramp) refreshes at
    # every step, so the sparsity in force is the schedule's and finalize() adds nothing at the end.
    model = mlp()
    pruner = pdprune.prepare(model, config(total=60, warmup=10, ramp=30, method=GMP()))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(60):
        train_steps(model, pruner, opt, step, step + 1)
        target = pruner.targets["2.weight"]
        assert pruner.state["2.weight"].sparsity == target.sparsity
    before = _zeros(model)
    pruner.finalize()
    assert _zeros(model) == before


def test_gmp_refreshes_spread_evenly_over_the_ramp():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=60, warmup=10, ramp=30, method=GMP(refreshes=3)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []
    for step in range(60):
        train_steps(model, pruner, opt, step, step + 1)
        seen.append(pruner.state["2.weight"].sparsity)
    changes = [i + 1 for i in range(1, 60) if seen[i] != seen[i - 1]]
    # pruning starts at step 10, then the ramp's progress passes 1/3 and 2/3 (10 steps apart),
    # then the budget at the ramp's end
    assert changes == [10, 19, 29, 39]


def test_gmp_forward_uses_exactly_the_hard_mask():
    model = mlp()
    pruner = pdprune.prepare(model, config(warmup=0, ramp=1, method=GMP()))
    mask = pruner.state["0.weight"].mask
    assert mask is not None and int(mask.sum()) == keep_count(1024, pruner.budgets["0.weight"])
    x = torch.randn(3, 16)
    y = model[0](x)
    assert torch.allclose(y, torch.nn.functional.linear(x, model[0].weight * mask, model[0].bias))
    y.sum().backward()
    assert bool((model[0].weight.grad[~mask] == 0).all())


def test_pruned_weights_stay_zero_despite_momentum():
    model = mlp()
    pruner = pdprune.prepare(model, config(warmup=5, ramp=0, method=OneShot()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    train_steps(model, pruner, opt, 0, 30)
    mask = pruner.state["2.weight"].mask
    assert bool((model[2].weight[~mask] == 0).all())


def test_one_shot_cuts_the_whole_budget_at_once_and_keeps_the_mask():
    model = mlp()
    pruner = pdprune.prepare(model, config(warmup=5, ramp=30, method=OneShot()))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train_steps(model, pruner, opt, 0, 5)
    assert pruner.current_sparsity()["2.weight"] == pruner.budgets["2.weight"]
    first = pruner.state["2.weight"].mask.clone()
    train_steps(model, pruner, opt, 5, 60)
    assert torch.equal(first, pruner.state["2.weight"].mask)
    pruner.finalize()
    assert torch.equal(model[2].weight != 0, first)


def test_stored_masks_survive_a_checkpoint(tmp_path):
    def run(start_state=None, stop=40):
        model = mlp()
        pruner = pdprune.prepare(model, config(method=GMP(refresh_every=7)))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        start = 0
        if start_state is not None:
            model.load_state_dict(start_state["model"])
            opt.load_state_dict(start_state["opt"])
            pruner.load_state_dict(start_state["pruner"])
            start = pruner.step_count
        train_steps(model, pruner, opt, start, stop)
        return model, pruner, opt

    full_model, _, _ = run(stop=60)
    model, pruner, opt = run(stop=23)
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict()},
        tmp_path / "c.pt",
    )
    resumed_model, _, _ = run(torch.load(tmp_path / "c.pt", weights_only=True), stop=60)
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_method_is_part_of_the_checkpoint_fingerprint():
    state = pdprune.prepare(mlp(), config(method=GMP(refresh_every=5))).state_dict()
    with pytest.raises(ValueError, match="config differs in method"):
        pdprune.prepare(mlp(), config()).load_state_dict(state)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_refresh_interval(bad):
    with pytest.raises(ValueError, match="refresh_every"):
        GMP(refresh_every=bad)
    with pytest.raises(ValueError, match="refreshes"):
        GMP(refreshes=bad)


def test_method_must_be_a_mask_method():
    with pytest.raises(TypeError, match=r"pdprune\.Method"):
        config(method="gmp")

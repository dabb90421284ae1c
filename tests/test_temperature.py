"""PDP's temperature: relative to each layer's weight scale by default, the paper's fixed tau as an
option, masks that settle to exact 0/1 before hardening, and the gain at the cut in the report."""

import copy

import pytest
import torch
from torch import nn

import pdprune
from pdprune.functional import relative_temperature, soft_masked_weight
from tests.helpers import batch, config, mlp, train_steps


def _two_scales() -> nn.Sequential:
    """A layer of large weights (|w| ~ 0.4) feeding one of small weights (|w| ~ 0.01)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        model[0].weight.copy_(0.4 * torch.randn(64, 16))
        model[2].weight.copy_(0.01 * torch.randn(10, 64))
    return model


def _gains(**settings) -> dict[str, float]:
    model = _two_scales()
    cfg = config(total=20, warmup=0, ramp=10, budget="uniform", sparsity=0.95, **settings)
    pruner = pdprune.prepare(model, cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    train_steps(model, pruner, optimizer, 0, 10)  # to the end of the ramp: 95% in force
    return {layer.name: layer.gain for layer in pruner.report().layers}


def test_default_gain_at_the_cut_is_the_same_for_large_and_small_weights():
    gains = _gains()
    assert all(g is not None and g > 1.0 for g in gains.values())
    assert max(gains.values()) / min(gains.values()) < 2.0, gains


def test_paper_tau_gives_scale_dependent_gains():
    # What the default replaced: with tau fixed in squared-weight units the large layer's gain is
    # about (0.4 / 0.01)^2 = 1600 times the small one's.
    gains = _gains(tau=1e-4)
    assert gains["0.weight"] / gains["2.weight"] > 100, gains


def test_relative_temperature_scales_with_the_weights():
    torch.manual_seed(0)
    weight = torch.randn(100, 100)
    small, large = relative_temperature(weight, 0.1), relative_temperature(weight * 40, 0.1)
    assert torch.allclose(large / small, torch.tensor(1600.0), rtol=1e-4)
    # and the mask of a scaled layer is the same mask
    t = weight.abs().flatten().kthvalue(9000).values
    a = soft_masked_weight(weight, t, small) / weight
    b = soft_masked_weight(weight * 40, t * 40, large) / (weight * 40)
    assert torch.allclose(a, b, atol=1e-5)
    assert float(relative_temperature(torch.zeros(3, 3), 0.1)) > 0.0  # no division by zero later


def test_relative_temperature_is_fixed_when_pruning_starts_and_survives_resume(tmp_path):
    model = mlp()
    cfg = config(total=40, warmup=5, ramp=20)
    pruner = pdprune.prepare(model, cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_steps(model, pruner, optimizer, 0, 12)
    name = pruner.tensors[0].name
    fixed = float(pruner.state[name].relative_temperature)
    start_square = None
    train_steps(model, pruner, optimizer, 12, 14)
    assert float(pruner.state[name].relative_temperature) == fixed  # not re-measured as weights move
    assert fixed > 0.0 and start_square is None

    saved = (copy.deepcopy(model.state_dict()), pruner.state_dict(), copy.deepcopy(optimizer.state_dict()))
    train_steps(model, pruner, optimizer, 14, 40)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    resumed_model = mlp()
    resumed_model.load_state_dict(saved[0])
    resumed = pdprune.prepare(resumed_model, cfg)
    resumed.load_state_dict(saved[1])
    resumed_optimizer = torch.optim.Adam(resumed_model.parameters(), lr=1e-2)
    resumed_optimizer.load_state_dict(saved[2])
    assert float(resumed.state[name].relative_temperature) == fixed
    train_steps(resumed_model, resumed, resumed_optimizer, 14, 40)
    for key, value in resumed_model.state_dict().items():
        assert torch.equal(value, uninterrupted[key]), key


def test_masks_settle_to_exact_zero_one_so_hardening_changes_nothing():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=40, warmup=0, ramp=20, settle=0.5))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_steps(model, pruner, optimizer, 0, 40)
    assert all(t.temperature_scale == 0.0 for t in pruner.tensors)
    x, _ = batch(999)
    with torch.no_grad():
        trained = model(x)  # the masks in force (training runs these)
        pruner.finalize()
        hardened = model(x)
    assert torch.equal(trained, hardened)


def test_temperature_shrinks_linearly_over_the_settle_fraction():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=40, warmup=0, ramp=20, settle=0.5))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    scales = []
    for step in range(40):
        train_steps(model, pruner, optimizer, step, step + 1)
        scales.append(pruner.tensors[0].temperature_scale)
    assert scales[:20] == [1.0] * 20  # the ramp keeps the full temperature
    assert scales[24] == pytest.approx(0.5)  # halfway through the 10 settle steps
    assert scales[30:] == [0.0] * 10


def test_settle_none_keeps_the_soft_mask_as_in_the_paper():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=40, warmup=0, ramp=20, settle=None))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    train_steps(model, pruner, optimizer, 0, 40)
    assert all(t.temperature_scale == 1.0 for t in pruner.tensors)


def test_layer_overrides_choose_either_temperature():
    cfg = config(
        budget="uniform",
        overrides={r"^0$": pdprune.LayerOverride(tau=1e-3), r"^2$": pdprune.LayerOverride(relative_tau=0.5)},
    )
    pruner = pdprune.prepare(mlp(), cfg)
    targets = {t.name: t for t in pruner.tensors}
    assert (targets["0.weight"].tau, targets["0.weight"].relative_tau) == (1e-3, None)
    assert (targets["2.weight"].tau, targets["2.weight"].relative_tau) == (None, 0.5)
    assert (targets["4.weight"].tau, targets["4.weight"].relative_tau) == (None, pdprune.DEFAULT_RELATIVE_TAU)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tau": 1e-4, "relative_tau": 0.1}, "not both"),
        ({"relative_tau": 0.0}, "relative_tau must be a finite number > 0"),
        ({"settle": 0.0}, r"settle .* \(0, 1\]"),
        ({"settle": 1.5}, r"settle .* \(0, 1\]"),
        ({"settle": True}, r"settle .* \(0, 1\]"),
    ],
)
def test_bad_temperature_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        config(**settings)
    if "settle" not in settings:
        with pytest.raises(ValueError, match=message):
            pdprune.LayerOverride(**settings)


def test_channel_configs_refuse_weight_temperature_settings():
    for name, value in (("relative_tau", 0.1), ("settle", 0.5)):
        with pytest.raises(ValueError, match=r"Channels\(") as info:
            pdprune.PruneConfig(sparsity=0.5, pattern="channel", **{name: value})
        assert f"{name}=" in str(info.value)


def test_report_shows_the_gain_for_pdp_only():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=20, warmup=0, ramp=10))
    train_steps(model, pruner, torch.optim.SGD(model.parameters(), lr=1e-2), 0, 10)
    text = pruner.report().to_text()
    assert "gain" in text.splitlines()[0]
    assert all(layer.gain is not None for layer in pruner.report().layers)

    model = mlp()
    gmp = pdprune.prepare(model, config(total=20, warmup=0, ramp=10, method=pdprune.baselines.GMP()))
    train_steps(model, gmp, torch.optim.SGD(model.parameters(), lr=1e-2), 0, 10)
    assert "gain" not in gmp.report().to_text().splitlines()[0]
    assert all(layer.gain is None for layer in gmp.report().layers)

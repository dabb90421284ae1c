"""The pruner on real modules: selection, masks in forward, state_dict, deepcopy, finalize."""

import copy
import io
import re

import pytest
import torch
from torch import nn

import pdprune
from pdprune.functional import keep_count, midpoint_threshold, soft_masked_weight
from tests.helpers import ZooNet, config, mlp, train_steps, zoo_inputs


def test_all_layer_kinds_are_selected_and_masked():
    model = ZooNet()
    pruner = pdprune.prepare(model, config(total=10, warmup=0, ramp=1, budget="uniform"))
    names = {t.name for t in pruner.tensors}
    assert names == {f"{n}.weight" for n in ["c1", "c1g", "c2", "c2dw", "t2", "c3", "t1", "head"]}
    inputs = zoo_inputs()
    with torch.no_grad():
        masked_out = model(*inputs)
    # the same forward computed by hand, with m(w) * w written into the weights
    sparsity_now = pruner.current_sparsity()
    assert set(sparsity_now.values()) == {0.9}
    with torch.no_grad():
        for tensor in pruner.tensors:
            w = tensor.parameter
            r = sparsity_now[tensor.name]
            tau = pruner.config.method.temperature(tensor, pruner.state[tensor.name])
            w.copy_(soft_masked_weight(w, midpoint_threshold(w, r), tau))
        pruner.remove()
        direct_out = model(*inputs)
    assert torch.allclose(masked_out, direct_out, atol=1e-6)


def test_state_dict_keys_isinstance_and_parameters_unchanged():
    model = mlp()
    keys = list(model.state_dict())
    params = [id(p) for p in model.parameters()]
    pruner = pdprune.prepare(model, config(warmup=0))
    model(torch.randn(2, 16))
    assert list(model.state_dict()) == keys
    assert [id(p) for p in model.parameters()] == params
    assert all(isinstance(model[i], nn.Linear) and type(model[i]) is nn.Linear for i in (0, 2, 4))
    assert all(isinstance(v, torch.Tensor) for v in model.state_dict().values())
    with pytest.warns(UserWarning, match="before the schedule's ramp ends"):
        pruner.finalize()
    assert list(model.state_dict()) == keys


def test_stored_weights_stay_dense_during_training():
    model = mlp()
    pruner = pdprune.prepare(model, config(warmup=0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train_steps(model, pruner, opt, 0, 40)
    assert all(int((p == 0).sum()) == 0 for p in model.parameters())


def test_finalize_leaves_exact_zeros_at_budget_and_removes_hooks():
    model = mlp()
    pruner = pdprune.prepare(model, config())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train_steps(model, pruner, opt, 0, 60)
    report = pruner.finalize()
    assert report.finalized
    for layer in report.layers:
        weight = model.get_parameter(layer.name)
        assert int(weight.count_nonzero()) == keep_count(weight.numel(), layer.target_sparsity)
        assert layer.achieved_sparsity == pytest.approx(layer.target_sparsity, abs=1e-9)
    assert report.achieved_sparsity == pytest.approx(0.9, abs=0.005)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match="finalized"):
        pruner.step()


def test_uniform_budget_and_overrides():
    model = mlp()
    cfg = config(budget="uniform", overrides={r"^2$": 0.5, r"^4$": pdprune.LayerOverride(tau=1e-3)})
    pruner = pdprune.prepare(model, cfg)
    pruner.step_count = 59
    report = pruner.report()
    by_name = {layer.name: layer.target_sparsity for layer in report.layers}
    assert by_name == {"0.weight": 0.9, "2.weight": 0.5, "4.weight": 0.9}
    assert pruner.targets["4.weight"].tau == 1e-3


def test_global_overrides_keep_the_overall_target():
    model = mlp()
    pruner = pdprune.prepare(model, config(overrides={r"^4$": 0.0}))
    report = pruner.report()
    assert {layer.name: layer.target_sparsity for layer in report.layers}["4.weight"] == 0.0
    assert report.achieved_sparsity == pytest.approx(0.9, abs=1e-3)


def test_include_exclude_and_filter():
    model = mlp()
    p = pdprune.prepare(model, config(exclude=[r"^4$"]))
    assert [t.name for t in p.tensors] == ["0.weight", "2.weight"]
    p.remove()
    p = pdprune.prepare(model, config(include=[r"^2$"]))
    assert [t.name for t in p.tensors] == ["2.weight"]
    p.remove()
    p = pdprune.prepare(model, config(filter_fn=lambda m, name: m.out_features == 64))
    assert [t.name for t in p.tensors] == ["0.weight", "2.weight"]


def test_warmup_is_dense_and_budgets_fixed_when_pruning_starts():
    model = mlp()
    pruner = pdprune.prepare(model, config(warmup=5, ramp=10))
    x = torch.randn(8, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train_steps(model, pruner, opt, 0, 4)
    assert pruner.budgets is None and set(pruner.current_sparsity().values()) == {0.0}
    pruner.report()  # inspecting during warm-up must not fix the budgets
    assert pruner.budgets is None
    hooks_out = model(x)
    pruner.remove()
    assert torch.equal(hooks_out, model(x))  # warm-up forward is exactly dense
    pruner = pdprune.prepare(model, config(warmup=5, ramp=10))
    pruner.step_count = 4
    pruner.step()
    assert pruner.budgets is not None and all(0 < s < 1 for s in pruner.current_sparsity().values())


def test_deepcopy_and_pickle_mid_schedule():
    model = mlp()
    pruner = pdprune.prepare(model, config(warmup=0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train_steps(model, pruner, opt, 0, 20)
    x = torch.randn(4, 16)
    twin = copy.deepcopy(model)
    assert torch.equal(twin(x), model(x))
    buffer = io.BytesIO()
    torch.save(model, buffer)  # whole-model pickles still work (the hooks are plain objects)
    buffer.seek(0)
    clone = torch.load(buffer, weights_only=False)
    assert torch.equal(clone(x), model(x))
    assert list(twin.state_dict()) == list(model.state_dict())


def test_tied_weights_stay_tied_and_are_pruned_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.encode = nn.Linear(16, 16, bias=False)
            self.decode = nn.Linear(16, 16, bias=False)
            self.decode.weight = self.encode.weight

        def forward(self, x):
            return self.decode(torch.relu(self.encode(x)))

    model = Tied()
    pruner = pdprune.prepare(model, config(total=20, warmup=0, ramp=5))
    assert [t.name for t in pruner.tensors] == ["encode.weight"]
    assert len(pruner.tensors[0].users) == 2
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _step in range(20):
        loss = model(torch.randn(4, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
    report = pruner.finalize()
    assert model.encode.weight is model.decode.weight
    assert int(model.encode.weight.count_nonzero()) == keep_count(256, 0.9)
    assert len(report.layers) == 1 and report.model_params == 256


def test_mask_gradient_reaches_weights():
    model = nn.Linear(10, 10)
    pdprune.prepare(model, config(total=10, warmup=0, ramp=1, tau=1e-2))
    model(torch.randn(3, 10)).sum().backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


def test_finalize_before_ramp_end_warns():
    model = mlp()
    pruner = pdprune.prepare(model, config())
    with pytest.warns(UserWarning, match="before the schedule's ramp ends"):
        pruner.finalize()


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("sparsity", [-0.5, 1.0, 2.0])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        config(sparsity=sparsity)


@pytest.mark.parametrize("tau", [0.0, -1e-4, float("inf")])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        config(tau=tau)


def test_model_with_no_prunable_layer():
    with pytest.raises(ValueError, match=r"no prunable layer.*filter_fn"):
        pdprune.prepare(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), config())


@pytest.mark.parametrize("field", ["include", "exclude", "overrides"])
def test_patterns_that_match_nothing(field):
    value = {"overrides": {"decoder": 0.5}}.get(field, ["decoder"])
    with pytest.raises(
        ValueError, match=re.escape("'decoder' matches no prunable layer; layers are: 0, 2, 4")
    ):
        pdprune.prepare(mlp(), config(**{field: value}))


def test_filters_that_leave_nothing():
    with pytest.raises(ValueError, match="no prunable layer"):
        pdprune.prepare(mlp(), config(filter_fn=lambda m, name: False))
    with pytest.raises(ValueError, match="leave no layer to prune"):
        pdprune.prepare(mlp(), config(exclude=["."]))


def test_invalid_regex():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        config(include=["("])


def test_nan_weights_when_threshold_taken():
    model = mlp()
    pdprune.prepare(model, config(warmup=0))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        model(torch.randn(2, 16))
    # the layer's Parameter is back in place after the failed forward
    assert isinstance(model[2]._parameters["weight"], nn.Parameter)


def test_layer_never_called_through_forward_is_reported():
    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.bypassed = nn.Linear(4, 4)

        def forward(self, x):
            return nn.functional.linear(self.used(x), self.bypassed.weight)

    model = Direct()
    pruner = pdprune.prepare(model, config(warmup=0))
    model(torch.randn(2, 4)).sum().backward()
    with pytest.raises(RuntimeError, match=r"bypassed\.weight.*exclude"):
        pruner.step()


def test_multihead_attention_out_proj_is_left_alone():
    model = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    pruner = pdprune.prepare(model, config(warmup=0))
    assert "self_attn.out_proj.weight" not in {t.name for t in pruner.tensors}
    model(torch.randn(2, 3, 16)).sum().backward()
    pruner.step()


def test_checkpoint_of_other_model_or_config_is_rejected():
    source = pdprune.prepare(mlp(), config())
    state = source.state_dict()
    other_model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.raises(ValueError, match=r"different model or config.*shapes differ for: 0\.weight"):
        pdprune.prepare(other_model, config()).load_state_dict(state)
    with pytest.raises(ValueError, match=r"different model or config.*config differs in sparsity"):
        pdprune.prepare(mlp(), config(sparsity=0.8)).load_state_dict(state)
    with pytest.raises(ValueError, match="not a pdprune weights pruner checkpoint of format 3"):
        pdprune.prepare(mlp(), config()).load_state_dict({"step": 3})


def test_pruner_state_round_trips_through_weights_only_load(tmp_path):
    model = mlp()
    pruner = pdprune.prepare(model, config())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train_steps(model, pruner, opt, 0, 25)
    torch.save({"pruner": pruner.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["pruner"]
    twin = mlp()
    twin.load_state_dict(model.state_dict())
    fresh = pdprune.prepare(twin, config())
    fresh.load_state_dict(state)
    assert fresh.step_count == 25 and fresh.budgets == pruner.budgets
    assert fresh.current_sparsity() == pruner.current_sparsity()


def test_preparing_twice_is_refused():
    model = mlp()
    pruner = pdprune.prepare(model, config())
    with pytest.raises(RuntimeError, match="already prepared"):
        pdprune.prepare(model, config())
    pruner.remove()
    pdprune.prepare(model, config())


def test_prepare_type_errors():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        pdprune.prepare("model", config())
    with pytest.raises(TypeError, match="PruneConfig"):
        pdprune.prepare(mlp(), {"sparsity": 0.9})


def test_cpu_autocast_bf16_keeps_mask_maths_in_float32():
    model = mlp()
    pruner = pdprune.prepare(model, config(warmup=0))
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    pruner.step()


def test_threshold_reused_within_a_step_and_recomputed_after_update(monkeypatch):
    from pdprune.methods import pdp

    calls = []
    real = pdp.midpoint_threshold
    monkeypatch.setattr(pdp, "midpoint_threshold", lambda w, r, **kw: calls.append(1) or real(w, r, **kw))
    model = mlp()
    pruner = pdprune.prepare(model, config(warmup=0, method=pdprune.PDP(threshold_tolerance=0.0)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):  # gradient accumulation: three forwards, one update
        model(torch.randn(4, 16)).sum().backward()
    assert len(calls) == 3  # once per layer
    opt.step()
    pruner.step()
    model(torch.randn(4, 16))
    assert len(calls) == 6


def test_numbers_of_any_kind_are_stored_as_plain_floats(tmp_path):
    import numpy as np

    cfg = pdprune.PruneConfig(
        sparsity=np.float32(0.9),
        tau=torch.tensor(1e-4),
        schedule=pdprune.Schedule(total_steps=np.int64(60), warmup=np.int32(10), ramp=np.float64(0.5)),
        overrides={"^4$": np.float64(0.5)},
    )
    assert type(cfg.sparsity) is float and type(cfg.tau) is float
    assert type(cfg.schedule.total_steps) is int and type(cfg.schedule.warmup) is int
    assert type(cfg.overrides["^4$"].sparsity) is float
    pruner = pdprune.prepare(mlp(), cfg)
    torch.save(pruner.state_dict(), tmp_path / "p.pt")
    torch.load(tmp_path / "p.pt", weights_only=True)
    pruner.report().save(tmp_path / "report")


@pytest.mark.parametrize("field", ["sparsity", "tau"])
def test_strings_are_rejected_up_front(field):
    with pytest.raises(TypeError, match=f"{field} must be a number"):
        config(**{field: "0.9"})
    with pytest.raises(TypeError, match="must be a number"):
        pdprune.LayerOverride(**{field: "0.5"})


def test_nan_error_names_the_layer():
    model = mlp()
    pdprune.prepare(model, config(warmup=0))
    with torch.no_grad():
        model[4].weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"^4\.weight holds 1 NaN"):
        model(torch.randn(2, 16))


def test_stepping_past_the_schedule_warns():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=3, warmup=0, ramp=1))
    for _ in range(3):
        pruner.step()
    with pytest.warns(UserWarning, match="total_steps=3"):
        pruner.step()

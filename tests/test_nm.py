"""N:M sparsity: the group maths, PDP's learned N:M masks, one-shot N:M and SR-STE."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pdprune
from pdprune.baselines import GMP, SRSTE, OneShot
from pdprune.functional import nm_hard_mask, nm_threshold, soft_mask


def _group_counts(keep: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    moved = keep.movedim(dim, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m).sum(-1)


nm_pairs = st.sampled_from([(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (1, 16)])


@settings(max_examples=80, deadline=None)
@given(
    nm=nm_pairs,
    out=st.integers(1, 6),
    groups_in=st.integers(1, 3),
    kernel=st.sampled_from([(), (1,), (3,), (2, 3), (1, 2, 2)]),
    seed=st.integers(0, 2**16),
)
def test_hard_mask_keeps_exactly_n_of_every_m_over_many_shapes(nm, out, groups_in, kernel, seed):
    n, m = nm
    weight = torch.randn((out, groups_in * m, *kernel), generator=torch.Generator().manual_seed(seed))
    keep = nm_hard_mask(weight, n, m)
    assert keep.shape == weight.shape and keep.dtype == torch.bool
    assert bool((_group_counts(keep, m, 1) == n).all())
    # the kept ones are the largest of their group
    mags = weight.abs().movedim(1, -1).reshape(-1, m)
    kept = keep.movedim(1, -1).reshape(-1, m)
    assert bool((mags.masked_fill(~kept, -1).max(-1).values >= mags.max(-1).values).all())
    assert bool(
        (
            mags.masked_fill(~kept, float("inf")).min(-1).values >= mags.masked_fill(kept, -1).max(-1).values
        ).all()
    )


def test_groups_run_along_input_channels_at_a_fixed_output_and_kernel_position():
    weight = torch.zeros(2, 4, 3, 3)
    weight[:, 1] = 5.0  # in every (out, kh, kw) group of 4 input channels, channel 1 is largest
    weight[:, 3] = 4.0
    keep = nm_hard_mask(weight, 2, 4)
    assert bool(keep[:, 1].all() and keep[:, 3].all()) and not bool(keep[:, 0].any() or keep[:, 2].any())


def test_ties_keep_the_earliest_weights():
    keep = nm_hard_mask(torch.ones(1, 8), 2, 4)
    assert keep.tolist() == [[True, True, False, False, True, True, False, False]]


def test_soft_mask_at_the_group_threshold_matches_the_hard_mask():
    torch.manual_seed(0)
    weight = torch.randn(16, 32)
    t = nm_threshold(weight, 2, 4)
    assert t.shape == weight.shape
    assert torch.equal(soft_mask(weight, t, 1e-7) >= 0.5, nm_hard_mask(weight, 2, 4))


def test_transposed_convolutions_group_along_their_input_dimension():
    weight = torch.randn(8, 3, 2, 2)  # ConvTranspose2d(8, 3): (in, out, kh, kw)
    keep = nm_hard_mask(weight, 1, 4, dim=0)
    assert bool((_group_counts(keep, 4, 0) == 1).all())


@pytest.mark.parametrize("n, m", [(0, 4), (4, 4), (5, 4)])
def test_bad_patterns_are_refused(n, m):
    with pytest.raises(ValueError, match="0 < N < M"):
        nm_hard_mask(torch.randn(2, 4), n, m)


def test_m_that_does_not_divide_the_dimension_is_named():
    with pytest.raises(ValueError, match=r"multiple of 4.*size 6"):
        nm_threshold(torch.randn(3, 6), 2, 4)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)  # 3 input channels: not a multiple of 4
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)  # 8 channels per group
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.grouped(torch.relu(self.conv(torch.relu(self.stem(x))))))
        return self.head(x.mean((2, 3)))


def _train(model, pruner, steps, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 3, 6, 6, generator=g)
        loss = nn.functional.cross_entropy(model(x), x[:, 0, 0, :4].argmax(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()


def _nm_config(pattern="2:4", **kwargs):
    schedule = pdprune.Schedule(
        total_steps=kwargs.pop("total", 40), warmup=kwargs.pop("warmup", 5), ramp=kwargs.pop("ramp", 20)
    )
    return pdprune.PruneConfig(schedule=schedule, pattern=pattern, **kwargs)


@pytest.mark.parametrize("pattern", ["2:4", "1:4", pdprune.NM(2, 8)])
def test_pdp_learns_and_hardens_an_exact_nm_model(pattern):
    torch.manual_seed(0)
    model = ConvNet()
    pruner = pdprune.prepare(model, _nm_config(pattern, exclude=["stem"]))
    _train(model, pruner, 40)
    nm = pdprune.config.parse_pattern(pattern)
    report = pruner.finalize()
    for name in ("conv", "grouped", "head"):
        weight = getattr(model, name).weight.detach()
        assert torch.equal(weight != 0, nm_hard_mask(weight, nm.n, nm.m)), name
        assert bool((_group_counts(weight != 0, nm.m, 1) == nm.n).all())
    assert report.achieved_sparsity == pytest.approx(nm.sparsity)
    assert report.pattern == str(nm) and f"pattern {nm}" in report.to_text()


def test_nm_ramp_grows_the_group_thresholds_from_zero():
    torch.manual_seed(0)
    model = ConvNet()
    pruner = pdprune.prepare(model, _nm_config(exclude=["stem"], warmup=2, ramp=10))
    target, weight = pruner.targets["conv.weight"], model.conv.weight
    method, state = pruner.config.method, pruner.state["conv.weight"]
    assert target.sparsity == 0.0  # warm-up: no mask at all
    for _ in range(2 + 5):
        pruner.step()
    assert 0 < target.progress < 1 and target.sparsity == pytest.approx(0.5 * target.progress)
    assert torch.allclose(
        method.threshold(weight, target, state), target.progress * nm_threshold(weight, 2, 4)
    )
    for _ in range(10):
        pruner.step()
    assert target.progress == 1.0 and torch.equal(
        method.threshold(weight, target, state), nm_threshold(weight, 2, 4)
    )


def test_indivisible_layers_are_an_error_that_names_them_and_the_fixes():
    with pytest.raises(
        ValueError, match=r"stem\.weight \(size 3 along dim 1\).*exclude=.*indivisible='dense'"
    ):
        pdprune.prepare(ConvNet(), _nm_config())


def test_indivisible_layers_can_be_left_dense_and_the_report_says_so():
    torch.manual_seed(0)
    model = ConvNet()
    pruner = pdprune.prepare(model, _nm_config(indivisible="dense"))
    _train(model, pruner, 40)
    report = pruner.finalize()
    stem = next(layer for layer in report.layers if layer.name == "stem.weight")
    assert stem.target_sparsity == 0.0 and stem.achieved_sparsity == 0.0 and "left dense" in stem.note
    assert "stem.weight: left dense" in report.to_text()
    assert bool((model.stem.weight != 0).all())


def test_depthwise_convolutions_cannot_be_nm_and_say_why():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"0\.weight \(size 1 along dim 1\)"):
        pdprune.prepare(model, _nm_config())


def test_uninitialised_lazy_layers_are_explained():
    with pytest.raises(ValueError, match="Run the model once"):
        pdprune.prepare(nn.Sequential(nn.LazyLinear(4)), _nm_config())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 0.9}, "pattern 2:4 removes 0.5"),
        ({"method": GMP()}, "GMP cannot prune pattern 2:4: it has unstructured forms only"),
        ({"overrides": {"head": 0.2}}, "unstructured pruning only"),
        ({"indivisible": "skip"}, "indivisible must be"),
    ],
)
def test_contradictory_nm_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _nm_config(**kwargs)


@pytest.mark.parametrize("pattern", ["3", "2:x", "4:2", "2-4"])
def test_bad_pattern_strings_are_refused(pattern):
    with pytest.raises(ValueError, match=r"pattern|0 < N < M"):
        _nm_config(pattern)


def test_srste_is_nm_only():
    with pytest.raises(ValueError, match="SRSTE cannot prune pattern unstructured: it has N:M forms only"):
        pdprune.PruneConfig(sparsity=0.5, schedule=pdprune.Schedule(10), method=SRSTE())


def test_srste_forward_is_nm_and_backward_is_straight_through_plus_decay():
    torch.manual_seed(0)
    layer = nn.Linear(8, 3)
    pruner = pdprune.prepare(layer, _nm_config(method=SRSTE(decay=0.5), warmup=0))
    keep = nm_hard_mask(layer.weight, 2, 4)
    x = torch.randn(5, 8)
    y = layer(x)
    assert torch.allclose(y, nn.functional.linear(x, layer.weight * keep, layer.bias))
    y.sum().backward()
    dense_grad = torch.ones(5, 3).T @ x  # d(sum(x W^T))/dW, the same for kept and pruned weights
    expected = dense_grad + 0.5 * layer.weight.detach() * (~keep)
    assert torch.allclose(layer.weight.grad, expected, atol=1e-5)
    assert pruner.state_dict()["method_state"]["weight"] == {}  # nothing stored: recomputed from the weights


def test_srste_mask_follows_the_weights_and_hardens_to_nm():
    torch.manual_seed(0)
    model = ConvNet()
    pruner = pdprune.prepare(model, _nm_config(method=SRSTE(), exclude=["stem"]))
    before = nm_hard_mask(model.conv.weight, 2, 4)
    _train(model, pruner, 40, lr=0.2)
    pruner.finalize()
    after = model.conv.weight != 0
    assert bool((_group_counts(after, 4, 1) == 2).all())
    assert not torch.equal(before, after)  # the mask was learned, not fixed at the start


def test_one_shot_nm_fixes_the_mask_when_warm_up_ends():
    torch.manual_seed(0)
    model = ConvNet()
    pruner = pdprune.prepare(model, _nm_config("1:4", method=OneShot(), exclude=["stem"]))
    _train(model, pruner, 5)
    mask = pruner.state["conv.weight"].mask.clone()
    assert bool((_group_counts(mask, 4, 1) == 1).all())
    _train(model, pruner, 35)
    pruner.finalize()
    assert torch.equal(model.conv.weight != 0, mask)


def test_a_2_4_checkpoint_does_not_load_into_an_unstructured_run():
    torch.manual_seed(0)
    model = ConvNet()
    saved = pdprune.prepare(model, _nm_config(exclude=["stem"])).state_dict()
    other = pdprune.prepare(
        ConvNet(),
        pdprune.PruneConfig(sparsity=0.5, schedule=pdprune.Schedule(40, warmup=5, ramp=20), exclude=["stem"]),
    )
    with pytest.raises(ValueError, match="pattern"):
        other.load_state_dict(saved)


def test_grouped_transposed_convs_need_m_to_divide_each_conv_group():
    model = nn.Sequential(nn.ConvTranspose2d(8, 4, 1, groups=4))  # 2 input channels per conv group
    with pytest.raises(ValueError, match=r"size 2 along dim 0"):
        pdprune.prepare(model, _nm_config())
    ok = nn.Sequential(nn.ConvTranspose2d(16, 4, 1, groups=2))  # 8 per conv group
    pruner = pdprune.prepare(ok, _nm_config(warmup=0, ramp=1, total=2))
    pruner.step()
    pruner.finalize()
    per_group = (ok[0].weight != 0).view(2, 2, 4, 2)  # (conv group, blocks of 4, 4, out/groups)
    assert bool((per_group.sum(2) == 2).all())


def test_unknown_layer_types_are_refused_for_nm():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 8))

        def forward(self, x):
            return x @ self.weight.T

    model = nn.Sequential(Odd())
    with pytest.raises(ValueError, match="does not know"):
        pdprune.prepare(model, _nm_config(filter_fn=lambda m, n: isinstance(m, Odd)))


def test_a_custom_method_must_opt_in_to_nm():
    class Rounded(pdprune.Method):
        def mask_weight(self, weight, target, state):
            return weight

    with pytest.raises(ValueError, match="Rounded cannot prune pattern 2:4"):
        _nm_config(method=Rounded())


def test_budget_rules_do_not_apply_to_nm():
    with pytest.raises(ValueError, match=r"budget= does not apply to pattern 2:4 .*leave it out"):
        _nm_config(budget="erk")


def test_current_sparsity_measures_the_nm_ramp():
    torch.manual_seed(0)
    model = ConvNet()
    pruner = pdprune.prepare(model, _nm_config(exclude=["stem"], warmup=0, ramp=10))
    for _ in range(4):
        pruner.step()
    measured = pruner.current_sparsity()["conv.weight"]
    target = pruner.targets["conv.weight"]
    expected = float(
        (model.conv.weight.abs() < target.progress * nm_threshold(model.conv.weight, 2, 4)).float().mean()
    )
    assert measured == pytest.approx(expected) and 0 < measured < 0.5


def test_numpy_integers_are_whole_numbers():
    import numpy as np

    assert pdprune.NM(np.int64(2), np.int32(4)) == pdprune.NM(2, 4)
    assert type(pdprune.NM(np.int64(2), 4).n) is int

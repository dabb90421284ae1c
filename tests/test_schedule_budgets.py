"""The schedule and the per-layer budgets."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.harness.models import SmallResNet
from benchmarks.harness.reference import ranked_budgets
from pdprune import PruneConfig, Schedule, prepare
from pdprune.functional import erk_budgets, global_magnitude_budgets, keep_count
from tests.helpers import run_as_ranks


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
    for step in range(49):
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


def _kept(shapes, budgets):
    return sum(keep_count(int(torch.Size(shape).numel()), r) for shape, r in zip(shapes, budgets))


shape_lists = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 64), st.integers(1, 64)),
        st.tuples(st.integers(1, 32), st.integers(1, 16), st.sampled_from([1, 3]), st.sampled_from([1, 3])),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(shapes=shape_lists, sparsity=st.one_of(st.floats(0.0, 0.995), st.floats(0.995, 0.99999)))
def test_erk_budgets_are_exact_and_never_empty_a_layer(shapes, sparsity):
    total = sum(int(torch.Size(s).numel()) for s in shapes)
    if keep_count(total, sparsity) < len(shapes):
        with pytest.raises(ValueError, match="fewer than the"):
            erk_budgets(shapes, sparsity)
        return
    budgets = erk_budgets(shapes, sparsity)
    assert _kept(shapes, budgets) == keep_count(total, sparsity)
    assert all(0.0 <= r < 1.0 for r in budgets)


def test_erk_is_exact_with_many_tiny_layers_at_extreme_sparsity():
    shapes = [(3, 3)] * 30 + [(512, 512)]
    for sparsity in (0.9995, 0.9998):
        budgets = erk_budgets(shapes, sparsity)
        assert _kept(shapes, budgets) == keep_count(30 * 9 + 512 * 512, sparsity)
        assert all(r < 1.0 for r in budgets)


def test_erk_keeps_small_and_thin_layers_denser():
    shapes = [(16, 1, 3, 3), (64, 64, 3, 3), (128, 128, 3, 3), (10, 128)]
    budgets = erk_budgets(shapes, 0.99)
    assert _kept(shapes, budgets) == keep_count(sum(torch.Size(s).numel() for s in shapes), 0.99)
    assert budgets[2] > budgets[1] > budgets[0]
    assert budgets[3] < budgets[1]
    # Densities follow sum(shape)/prod(shape) among the layers that are not capped.
    density = [1 - r for r in budgets]
    ratio = (sum(shapes[2]) / torch.Size(shapes[2]).numel()) / (
        sum(shapes[1]) / torch.Size(shapes[1]).numel()
    )
    assert density[2] / density[1] == pytest.approx(ratio, rel=0.01)


def test_erk_caps_dense_layers_and_spreads_the_excess():
    shapes = [(2, 2), (1000, 1000)]
    budgets = erk_budgets(shapes, 0.5)
    assert budgets[0] == 0.0
    assert _kept(shapes, budgets) == keep_count(1_000_004, 0.5)


def test_erk_respects_fixed_layers():
    shapes = [(10, 10), (30, 10), (60, 10)]
    budgets = erk_budgets(shapes, 0.8, fixed=[0.5, None, None])
    assert budgets[0] == 0.5
    assert _kept(shapes, budgets) == keep_count(1000, 0.8)


def test_erk_keeps_every_resnet_layer_alive_at_99_percent():
    """The magnitude ranking leaves single weights in small layers at 99%; ERK does not."""
    torch.manual_seed(0)
    model = SmallResNet()
    collapsed = prepare(model, PruneConfig(sparsity=0.99, schedule=Schedule(100))).report()
    assert min(layer.nonzero for layer in collapsed.layers) == 1  # what ERK is for
    torch.manual_seed(0)
    report = prepare(SmallResNet(), PruneConfig(sparsity=0.99, schedule=Schedule(100), budget="erk")).report()
    assert report.achieved_sparsity == pytest.approx(0.99, abs=1e-4)
    assert min(layer.nonzero for layer in report.layers) >= 9


def test_unknown_budget_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="'global', 'erk', 'uniform'"):
        PruneConfig(sparsity=0.9, schedule=Schedule(10), budget="erdos")


def _starved_warnings(budget: str, **overrides: object) -> tuple[list[str], object]:
    from pdprune.demo.model import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(1, 10, image_size=8)  # stem conv: 288 weights for 32 channels
    config = PruneConfig(
        sparsity=0.98, budget=budget, schedule=Schedule(total_steps=10, warmup=2, ramp=4), **overrides
    )
    pruner = prepare(model, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            model(torch.randn(4, 1, 8, 8)).sum().backward()
            optimizer.step()
            pruner.step()
    starved = [str(w.message) for w in caught if "fewer weights than they have outputs" in str(w.message)]
    assert all(w.filename == __file__ for w in caught if "fewer weights" in str(w.message))
    return starved, pruner.report()


def test_uniform_budget_that_empties_outputs_warns_once_with_the_way_out():
    starved, report = _starved_warnings("uniform")
    assert len(starved) == 1  # when the budgets are fixed, not at every step
    assert "features.0.weight keeps 6 of 288 weights for 32 outputs" in starved[0]
    assert "budget='erk'" in starved[0] and "overrides={'features.0': 0.5}" in starved[0]
    notes = {layer.name: layer.note for layer in report.layers}
    assert (
        notes["features.0.weight"] == "keeps 6 weights for 32 outputs: at least 26 outputs lose every weight"
    )
    assert notes["classifier.3.weight"] == ""  # 26 weights for 10 outputs: none is certain to die


def test_budgets_that_leave_every_output_a_chance_do_not_warn():
    assert _starved_warnings("erk")[0] == []
    # A sparsity the user fixed for the layer is what they asked for: no warning.
    assert _starved_warnings("uniform", overrides={"features.0": 0.98})[0] == []


def test_output_units_follow_each_layout():
    from torch import nn

    from pdprune.patterns.specs import output_units

    class Conv1D(nn.Module):  # transformers' GPT-2 layout: weight (in, out)
        def __init__(self) -> None:
            super().__init__()
            self.nf, self.weight = 6, nn.Parameter(torch.zeros(4, 6))

    assert output_units(nn.Linear(4, 6), (6, 4)) == 6
    assert output_units(nn.Conv2d(4, 6, 3), (6, 4, 3, 3)) == 6
    transposed = nn.ConvTranspose2d(4, 6, 3, groups=2)
    assert output_units(transposed, tuple(transposed.weight.shape)) == 6
    assert output_units(Conv1D(), (4, 6)) == 6
    assert output_units(nn.Embedding(5, 3), (5, 3)) is None


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=5),
    levels=st.sampled_from([3, 50, None]),  # few distinct magnitudes (many ties), or continuous
    sparsity=st.floats(0.0, 0.999),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**16),
    fix_first=st.booleans(),
)
def test_global_budgets_by_counting_equal_the_full_ranking(sizes, levels, sparsity, dtype, seed, fix_first):
    generator = torch.Generator().manual_seed(seed)
    weights = []
    for n in sizes:
        w = torch.randn(n, generator=generator)
        if levels is not None:
            w = torch.randint(-levels, levels + 1, (n,), generator=generator).float() / levels
        weights.append(w.to(dtype))
    fixed = [0.5] + [None] * (len(sizes) - 1) if fix_first and len(sizes) > 1 else None
    try:
        expected = ranked_budgets(weights, sparsity, fixed)
    except RuntimeError:
        return
    try:
        got = global_magnitude_budgets(weights, sparsity, fixed)
    except ValueError:  # more layers than weights to keep, or impossible overrides: said clearly
        return
    assert got == expected


def test_global_budgets_over_shards_equal_those_of_whole_tensors():
    """Each tensor cut into 3 shards along its rows (one left empty), a thread per rank: the
    budgets of the whole tensors on every rank."""
    torch.manual_seed(1)
    weights = [torch.randn(6, 5), torch.randint(-2, 3, (4, 8)).float(), 0.1 * torch.randn(2, 3)]
    shards = [[w[2 * r : 2 * r + 2] for w in weights] for r in range(3)]
    results = run_as_ranks(3, lambda rank, reduce: global_magnitude_budgets(shards[rank], 0.8, reduce=reduce))
    expected = global_magnitude_budgets(weights, 0.8)
    assert expected == ranked_budgets(weights, 0.8)
    assert results == [expected] * 3


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 12),
    world=st.integers(2, 4),
    levels=st.sampled_from([1, 4, None]),
    sparsity=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_a_hard_mask_over_shards_is_the_whole_tensors_mask_cut_the_same_way(
    rows, world, levels, sparsity, seed
):
    from pdprune.functional import hard_mask
    from pdprune.functional.select import top_magnitude_mask

    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, 3, generator=generator)
    if levels is not None:  # many ties, which go to the earlier rows, whichever rank holds them
        weight = torch.randint(-levels, levels + 1, (rows, 3), generator=generator).float()
    pieces = list(weight.chunk(world))
    pieces += [weight[:0]] * (world - len(pieces))
    keep = keep_count(weight.numel(), sparsity)
    masks = run_as_ranks(
        world, lambda rank, reduce: top_magnitude_mask(pieces[rank], keep, reduce, shard=(rank, world))
    )
    assert torch.equal(torch.cat(masks), hard_mask(weight, sparsity))


def test_global_budgets_name_the_tensor_that_holds_nan():
    with pytest.raises(FloatingPointError, match=r"conv\.weight holds 2 NaN"):
        global_magnitude_budgets(
            [torch.randn(10), torch.tensor([1.0, float("nan"), float("nan")])],
            0.5,
            names=["fc.weight", "conv.weight"],
        )

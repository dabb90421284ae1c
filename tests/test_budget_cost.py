"""benchmarks.budget_cost: one process per variant and round, medians in the table."""

import json

from benchmarks import budget_cost


def test_budget_cost_measures_every_variant_in_its_own_processes(tmp_path):
    argv = ["--widths", "32", "64", "16", "--warmup", "3", "--pruning", "2", "--repeats", "2"]
    argv += ["--variants", "dense", "pdp-global-ranked", "--tag", "t", "--out", str(tmp_path)]
    assert budget_cost.main(argv) == 0
    result = json.loads((tmp_path / "budget_cost_t.json").read_text())
    assert [run["variant"] for run in result["runs"]] == ["dense", "pdp-global-ranked"]
    for run in result["runs"]:
        assert run["weights"] == 32 * 64 + 64 * 16
        assert len(run["repeats"]) == 2
        # Peaks only grow within a process, and the medians are of the processes' values.
        assert run["dense_peak_mib"] <= run["peak_after_budgets_mib"] <= run["peak_mib"]
        assert sorted(r["budget_step_seconds"] for r in run["repeats"])[0] <= run["budget_step_seconds"]
    table = (tmp_path / "budget_cost_t.md").read_text()
    assert "| pdp-global-ranked |" in table and "Linear 32-64-16" in table

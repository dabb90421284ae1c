"""benchmarks.scale_step: dense and PDP under DDP and FSDP2, and pdprune's own collectives."""

import json

from benchmarks import scale_step


def test_scale_step_counts_only_the_collectives_pdprune_makes(tmp_path):
    argv = ["--widths", "32", "64", "16", "--ranks", "1", "2", "--warm", "4", "--steps", "2"]
    argv += ["--rounds", "1", "--tag", "t", "--out", str(tmp_path)]
    assert scale_step.main(argv) == 0
    result = json.loads((tmp_path / "scale_step_t.json").read_text())
    runs = {(r["wrap"], r["ranks"]): r for r in result["runs"]}
    assert set(runs) == {("ddp", 1), ("ddp", 2), ("fsdp2", 1), ("fsdp2", 2)}
    for run in runs.values():
        assert len(run["steps"]["dense"]) == len(run["steps"]["pdp"]) == 2
        # In the ramp PDP's thresholds come from the weights each rank holds whole in forward:
        # no collective of pdprune's own per step, under either wrapper.
        assert run["pdprune_traffic_per_step"]["calls"] == 0
    # Fixing global budgets: DDP broadcasts rank 0's budgets; FSDP2 also all-reduces histograms
    # of the sharded magnitudes (two of 65,536 float64 bins, then counts); one process, nothing.
    assert runs[("ddp", 1)]["budget_step_traffic"]["calls"] == 0
    assert runs[("ddp", 2)]["budget_step_traffic"]["calls"] == 1
    assert runs[("ddp", 2)]["budget_step_traffic"]["meetings"] == 1
    fsdp = runs[("fsdp2", 2)]["budget_step_traffic"]
    assert fsdp["calls"] >= 3 and fsdp["bytes"] >= 2 * 65536 * 8
    # Hardening: nothing to agree on under DDP (every rank holds the whole weights); under FSDP2
    # the exact selection over each layer's shards (histograms and counts, per layer).
    assert runs[("ddp", 2)]["finalize_traffic"]["calls"] == 0
    assert runs[("fsdp2", 2)]["finalize_traffic"]["calls"] >= 2 * 2  # two layers
    table = (tmp_path / "scale_step_t.md").read_text()
    assert "| fsdp2 | 2 |" in table and "MLP 32-64-16" in table

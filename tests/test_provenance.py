"""Every result file records the commit and the command that produced it."""

import re
from pathlib import Path

from pdprune.machine import command_line, git_commit, provenance

ROOT = Path(__file__).resolve().parent.parent


def test_the_command_is_recorded_as_typed_and_pastes_back_into_a_shell():
    typed = command_line("pdprune", ["bench", "latency", "--model", "pkg.mod:build"])
    assert typed == "pdprune bench latency --model pkg.mod:build"
    assert command_line("python -m benchmarks.accuracy", ["--mode", "CPU grid: 2 epochs"]) == (
        "python -m benchmarks.accuracy --mode 'CPU grid: 2 epochs'"
    )


def test_the_commit_is_the_checkouts_head_or_unknown_outside_git(tmp_path):
    assert git_commit(tmp_path) == "unknown"
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", git_commit(ROOT))
    stamp = provenance("pdprune", ["demo"], folder=tmp_path)
    assert stamp == {"commit": "unknown", "command": "pdprune demo"}


def test_the_harness_records_the_commit_of_its_own_repository(tmp_path, monkeypatch):
    from benchmarks.harness.provenance import provenance as harness_provenance

    monkeypatch.chdir(tmp_path)  # the working directory does not matter
    stamp = harness_provenance("benchmarks.step_cost", ["--steps", "2"])
    assert stamp == {"commit": git_commit(ROOT), "command": "python -m benchmarks.step_cost --steps 2"}


def test_every_committed_result_states_its_commit_and_command():
    import json

    results = ROOT / "benchmarks" / "results"
    files = sorted(p for p in results.rglob("*") if p.suffix in (".json", ".md") and p.name != "README.md")
    assert files
    for path in files:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            assert data.get("command"), path
            assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", data.get("commit", "")), path
        else:
            head = path.read_text().splitlines()[:8]
            assert any(line.startswith("Command: ") for line in head), path
            assert any(re.match(r"Commit: [0-9a-f]{40}", line) for line in head), path
    index = (results / "README.md").read_text()
    for path in files:
        assert path.stem in index, f"{path.name} is not listed in benchmarks/results/README.md"

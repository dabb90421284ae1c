"""The command line, run as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from pdprune import cli
from pdprune.demo import data as fashion_mnist


def test_demo_quick_run_prints_comparison_and_writes_results(tmp_path, capsys):
    code = cli.main(
        ["demo", "--epochs", "3", "--train-limit", "400", "--out", str(tmp_path), "--no-progress"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "nonzero parameters" in out and "PDP 90%" in out
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert comparison["achieved_sparsity"] == pytest.approx(0.9, abs=0.005)
    assert 0.0 <= comparison["pruned_accuracy"] <= 1.0
    assert comparison["epochs"] == 3 and comparison["train_examples"] == 400
    assert {p.name for p in tmp_path.iterdir()} == {
        "comparison.json",
        "report.json",
        "report.txt",
        "sparsity.png",
    }


def test_demo_with_a_2_4_pattern(tmp_path, capsys):
    args = [
        "demo",
        "--pattern",
        "2:4",
        "--epochs",
        "2",
        "--train-limit",
        "300",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "pattern 2:4" in out and "PDP 2:4" in out and "features.0.weight: left dense" in out
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert comparison["pattern"] == "2:4" and 0.45 < comparison["achieved_sparsity"] <= 0.5


def test_demo_channel_pattern_shrinks_and_measures_latency(tmp_path, capsys):
    args = [
        "demo",
        "--pattern",
        "channel",
        "--epochs",
        "2",
        "--train-limit",
        "300",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert (
        "50% of the channels" in out and "(removed)" in out and "measured speedup of the shrunk model" in out
    )
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert comparison["pattern"] == "channel" and comparison["report"]["shrunk"]
    assert comparison["pruned_nonzero_params"] < comparison["dense_params"] / 2
    assert comparison["latency"]["speedup"] > 0 and comparison["latency"]["repeats"] == 30


@pytest.mark.parametrize(
    "args, message",
    [(["--pattern", "2:4", "--sparsity", "0.9"], "does not apply"), (["--pattern", "2-4"], "N:M")],
)
def test_demo_refuses_contradictory_or_bad_patterns(args, message, tmp_path, capsys):
    assert cli.main(["demo", *args, "--out", str(tmp_path), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1.0", "-0.2", "abc"])
def test_bad_sparsity_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--sparsity", value])
    assert exit_info.value.code == 2
    assert "sparsity" in capsys.readouterr().err


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setenv(fashion_mnist.ENV_VAR, str(tmp_path / "empty"))
    assert cli.main(["demo", "--dataset", "fashion-mnist", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and fashion_mnist.ENV_VAR in err


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "pdprune.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 0 and "--sparsity" in result.stdout


def test_bad_output_folder_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    assert cli.main(["demo", "--out", str(tmp_path / "file" / "sub"), "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "keep me"

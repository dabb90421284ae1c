"""Latency comparison and `pdprune bench latency`: measured rows, honest warnings, clear errors."""

import json

import pytest
import torch

from pdprune.bench.latency import run_latency_benchmark
from pdprune.cli import main
from pdprune.demo import SmallCNN
from pdprune.latency import compare_latency, compare_onnx_latency, speed_warnings


def test_warnings_name_patterns_that_cannot_pay_on_the_device():
    unstructured = speed_warnings("unstructured", "cpu", dense_ms=50.0)
    assert len(unstructured) == 1 and "dense kernels" in unstructured[0]
    assert any("2:4 on CUDA" in w for w in speed_warnings("2:4", "cpu", dense_ms=50.0))
    assert any("1:4 runs on dense kernels on cuda" in w for w in speed_warnings("1:4", "cuda", dense_ms=50.0))
    assert speed_warnings("channel", "cpu", dense_ms=50.0, speedup=1.7) == []
    assert any("overhead" in w for w in speed_warnings("channel", "cpu", dense_ms=0.2, speedup=1.1))
    assert any("round_to=8" in w for w in speed_warnings("channel", "cpu", dense_ms=50.0, speedup=0.8))
    with pytest.raises(ValueError, match="pattern must be"):
        speed_warnings("sparse", "cpu", dense_ms=1.0)


def test_compare_latency_restores_modes_and_reports_the_batch():
    dense, pruned = SmallCNN(), SmallCNN().eval()
    result = compare_latency(dense, pruned, torch.randn(3, 1, 28, 28), repeats=2, warmup=0)
    assert dense.training and not pruned.training
    assert result.batch == 3 and result.repeats == 2
    assert result.speedup == pytest.approx(result.dense_ms / result.pruned_ms)


@pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="install with: pip install 'pdprune[onnx]'",
)
def test_onnx_files_are_timed_side_by_side_in_onnx_runtime(tmp_path):
    from pdprune.export import save_onnx

    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 8))
    narrow = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    x = torch.randn(4, 64)
    save_onnx(wide, tmp_path / "wide.onnx", x)
    save_onnx(narrow, tmp_path / "narrow.onnx", x)
    result = compare_onnx_latency(
        tmp_path / "wide.onnx", tmp_path / "narrow.onnx", x, repeats=3, warmup=1, threads=1
    )
    assert (
        result.device == "cpu (onnxruntime)"
        and result.threads == 1
        and result.batch == 4
        and result.repeats == 3
    )
    assert result.dense_ms > 0 and result.pruned_ms > 0
    assert result.speedup == pytest.approx(result.dense_ms / result.pruned_ms)
    with pytest.raises(ValueError, match="takes 1 inputs, 2 were given"):
        compare_onnx_latency(tmp_path / "wide.onnx", tmp_path / "narrow.onnx", (x, x), repeats=1)
    with pytest.raises(ValueError, match="repeats must be"):
        compare_onnx_latency(tmp_path / "wide.onnx", tmp_path / "narrow.onnx", x, repeats=0)


def test_bench_latency_writes_rows_for_every_pattern_and_batch(tmp_path, capsys):
    code = main(
        [
            "bench",
            "latency",
            "--model",
            "small-cnn",
            "--batches",
            "1",
            "2",
            "--repeats",
            "2",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
            "--tag",
            "t",
        ]
    )
    assert code == 0
    payload = json.loads((tmp_path / "latency_t.json").read_text())
    rows = {(r["pattern"], r["batch"]) for r in payload["rows"]}
    assert rows == {(p, b) for p in ("unstructured", "2:4", "channel") for b in (1, 2)}
    for row in payload["rows"]:
        assert row["dense_ms"] > 0 and row["pruned_ms"] > 0
        assert 0.45 <= row["achieved_sparsity"] <= 0.55
        if row["pattern"] != "channel":
            assert row["warnings"], "dense kernels must be called out"
    channel = next(r for r in payload["rows"] if r["pattern"] == "channel")
    assert channel["params"][1] < channel["params"][0]  # physically smaller, not only zeroed
    assert "| channel |" in (tmp_path / "latency_t.md").read_text()
    assert "warning: unstructured zeros run on dense kernels" in capsys.readouterr().out


def test_bench_latency_refuses_what_it_cannot_measure(tmp_path, capsys):
    if not torch.cuda.is_available():
        assert (
            main(["bench", "latency", "--model", "small-cnn", "--device", "cuda", "--out", str(tmp_path)])
            == 2
        )
        assert "no CUDA GPU" in capsys.readouterr().err
    assert (
        main(["bench", "latency", "--model", "small-cnn", "--patterns", "3:2", "--out", str(tmp_path)]) == 2
    )
    assert "0 < N < M" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown model"):
        run_latency_benchmark(model="vgg")


def test_bench_latency_runs_a_users_own_model(tmp_path, capsys):
    args = [
        "bench",
        "latency",
        "--model",
        "tests.user_model:tiny_mlp",
        "--input-shape",
        "1,16",
        "--batches",
        "1",
        "3",
        "--repeats",
        "2",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    payload = json.loads((tmp_path / "latency_tiny_mlp-cpu.json").read_text())  # named by the callable
    measured = {(r["pattern"], r["batch"]) for r in payload["rows"]}
    assert measured == {(p, b) for p in ("unstructured", "2:4", "channel") for b in (1, 3)}
    assert payload["model"] == "tests.user_model:tiny_mlp" and payload["input_shape"] == [16]
    assert payload["command"] == "pdprune " + " ".join(args) and payload["commit"]
    channel = next(r for r in payload["rows"] if r["pattern"] == "channel")
    assert channel["params"][1] < channel["params"][0]
    text = (tmp_path / "latency_tiny_mlp-cpu.md").read_text()
    assert f"Command: `{payload['command']}`" in text and f"Commit: {payload['commit']}" in text


def test_bench_latency_console_script_imports_the_model_from_the_working_directory(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "pdprune"
    if not script.exists():
        pytest.skip("the pdprune console script is not installed next to this Python")
    root = Path(__file__).resolve().parent.parent
    args = [
        "bench",
        "latency",
        "--model",
        "tests.user_model:tiny_mlp",
        "--input-shape",
        "1,16",
        "--patterns",
        "channel",
        "--batches",
        "1",
        "--repeats",
        "2",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
        "--tag",
        "cli",
    ]
    done = subprocess.run(
        [str(script), *args], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "latency_cli.json").read_text())["rows"][0]["pattern"] == "channel"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "tests.user_model:tiny_mlp"], "give --input-shape"),
        (["--model", "tests.user_model:absent", "--input-shape", "1,16"], "has no 'absent'"),
        (["--model", "tests.user_model:not_a_factory", "--input-shape", "1,16"], "not callable"),
        (["--model", "tests.no_such_module:f", "--input-shape", "1,16"], "cannot import"),
        (["--model", "vgg"], "MODULE:CALLABLE"),
    ],
)
def test_bench_latency_says_what_is_wrong_with_a_model(args, message, tmp_path, capsys):
    assert main(["bench", "latency", *args, "--repeats", "1", "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_bad_input_shapes_are_usage_errors(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "latency", "--model", "tests.user_model:tiny_mlp", "--input-shape", "16"])
    assert "batch size" in capsys.readouterr().err

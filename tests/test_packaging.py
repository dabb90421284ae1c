"""The installed library holds what users import and the user-facing commands; the research
harness (accuracy grid, tasks, datasets, reference models, training loop) stays in benchmarks/."""

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = (
    "pdprune.bench.accuracy",
    "pdprune.bench.tasks",
    "pdprune.bench.methods",
    "pdprune.bench.text_task",
    "pdprune.models",
    "pdprune.data",
    "pdprune.training",
)


def test_the_installed_package_has_no_research_harness():
    assert [name for name in HARNESS if importlib.util.find_spec(name) is not None] == []
    for name in ("pdprune.demo", "pdprune.bench.latency", "pdprune.cli"):  # what users run stays
        assert importlib.util.find_spec(name) is not None


def _setuptools_builds_wheels() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.skipif(
    not _setuptools_builds_wheels(), reason="building a wheel here needs setuptools>=70.1 or wheel"
)
def test_the_wheel_ships_the_library_without_the_harness(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves no build/ or egg-info in the checkout
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    script = f"from setuptools import build_meta; print(build_meta.build_wheel({str(tmp_path / 'dist')!r}))"
    (tmp_path / "dist").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=source, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = zipfile.ZipFile(tmp_path / "dist" / done.stdout.strip().splitlines()[-1]).namelist()
    assert (
        "pdprune/demo/run.py" in names and "pdprune/bench/latency.py" in names and "pdprune/cli.py" in names
    )
    shipped = {name.rsplit("/", 1)[0] for name in names if name.endswith(".py")}
    assert not [p for p in shipped if p.startswith(("benchmarks", "tests", "pdprune/models", "pdprune/data"))]
    assert not [n for n in names if n.endswith(("training.py", "bench/accuracy.py", "bench/tasks.py"))]

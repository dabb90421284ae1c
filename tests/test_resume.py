"""Resuming mid-schedule in a new process gives exactly the masks and weights of one run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def run_worker(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-m", "tests.resume_worker", *args], check=True, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("full") / "full.pt"
    run_worker("full", "60", str(path))
    return path


@pytest.mark.parametrize("interrupt_at", [5, 25, 45])  # during warm-up, mid-ramp, after the ramp
def test_resume_in_new_process_matches_uninterrupted_run(tmp_path, uninterrupted, interrupt_at):
    run_worker("first", str(interrupt_at), str(tmp_path / "ckpt.pt"))
    run_worker("resume", "60", str(tmp_path / "resumed.pt"), str(tmp_path / "ckpt.pt"))
    full = torch.load(uninterrupted, weights_only=True)["model"]
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)["model"]
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key] != 0, resumed[key] != 0), f"mask differs for {key}"
        assert torch.equal(full[key], resumed[key]), f"weights differ for {key}"
    sparsity = sum(int((full[k] == 0).sum()) for k in ("0.weight", "2.weight", "4.weight")) / (
        16 * 64 + 64 * 64 + 64 * 4
    )
    assert sparsity == pytest.approx(0.9, abs=1e-3)

"""`torchrun -m pdprune.demo.distributed`: the demo CNN pruned on two gloo ranks, as the docs run it."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import pdprune
from pdprune.demo import SmallCNN

pytest.importorskip("sklearn")


def _torchrun(*arguments: str) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "pdprune.demo.distributed", *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("wrap, pattern", [("fsdp2", "unstructured"), ("fsdp2", "channel"), ("ddp", "2:4")])
def test_the_distributed_demo_prunes_and_saves_what_it_reports(tmp_path, wrap, pattern):
    saved = tmp_path / "pruned.safetensors"
    out = _torchrun("--wrap", wrap, "--pattern", pattern, "--epochs", "2", "--save", str(saved))
    assert f"pdprune on 2 rank(s) ({wrap}, gloo)" in out
    accuracy = float(out.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 80.0, out  # 2 epochs on digits; a broken run sits near 10%
    state = pdprune.export.load_sparse(saved)
    model = SmallCNN(image_size=8)
    model.load_state_dict(state)  # the stock class, shapes unchanged: channels are zeroed
    weights = {name: p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1}
    zeros = sum(int((w == 0).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values())
    if pattern == "unstructured":
        assert zeros == pytest.approx(0.9, abs=0.002)
    elif pattern == "2:4":
        w = weights["classifier.1.weight"]
        assert bool(((w.reshape(-1, 4) != 0).sum(1) <= 2).all())
    else:
        conv = weights["features.0.weight"]
        assert int((conv.flatten(1).abs().sum(1) == 0).sum()) == conv.shape[0] // 2
        assert torch.equal(state["features.1.weight"] == 0, conv.flatten(1).abs().sum(1) == 0)


def test_the_distributed_demo_says_how_to_launch_it():
    done = subprocess.run(
        [sys.executable, "-m", "pdprune.demo.distributed"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "RANK"},
        timeout=120,
    )
    assert done.returncode == 2
    assert "run it under torchrun" in done.stderr

"""Under DistributedDataParallel every rank ends up with the same masks."""

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import pdprune
from tests.helpers import exit_rank, one_thread, start_rank

WORLD = 2
STEPS = 30


def _worker(rank: int, store_file: str, result_dir: str) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.helpers import batch, config, mlp

    start_rank(rank, WORLD, store_file)
    try:
        # Different initial weights per rank: DDP broadcasts rank 0's, and masks must follow.
        model = mlp(seed=rank)
        pruner = pdprune.prepare(model, config(total=STEPS, warmup=5, ramp=15))
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        for step in range(STEPS):
            x, y = batch(WORLD * step + rank)  # each rank sees its own shard
            loss = nn.functional.cross_entropy(ddp(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pruner.step()
        soft = {}
        with torch.no_grad():
            for tensor in pruner.tensors:
                state = pruner.state[tensor.name]
                soft[tensor.name] = pruner.config.method.mask_weight(tensor.parameter, tensor, state).clone()
        hard = pruner.masks()
        report = pruner.finalize()
        torch.save(
            {
                "hard": hard,
                "soft": soft,
                "budgets": pruner.budgets,
                "final": {k: v.clone() for k, v in model.state_dict().items()},
                "sparsity": report.achieved_sparsity,
            },
            os.path.join(result_dir, f"rank{rank}.pt"),
        )
        dist.barrier()  # no rank tears down while another still talks to it
    finally:
        dist.destroy_process_group()
    exit_rank()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_masks_identical_on_every_rank_under_ddp(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    first = ranks[0]
    assert first["sparsity"] == pytest.approx(0.9, abs=0.005)
    for other in ranks[1:]:
        assert other["budgets"] == first["budgets"]
        for name in first["hard"]:
            assert torch.equal(other["hard"][name], first["hard"][name]), name
            assert torch.equal(other["soft"][name], first["soft"][name]), name
        for key in first["final"]:
            assert torch.equal(other["final"][key], first["final"][key]), key


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_pruner_state_keys_do_not_depend_on_the_ddp_wrapper(tmp_path):
    from tests.helpers import config, mlp, train_steps

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(mlp(seed=0))
        pruner = pdprune.prepare(wrapped, config(total=20, warmup=2, ramp=5))  # wrap, then prepare
        optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.05)
        train_steps(wrapped, pruner, optimizer, 0, 8)
        saved = pruner.state_dict()
    finally:
        dist.destroy_process_group()
    assert not any(name.startswith("module.") for name in saved["method_state"])
    plain = mlp(seed=0)
    plain.load_state_dict(wrapped.module.state_dict())
    again = pdprune.prepare(plain, config(total=20, warmup=2, ramp=5))
    again.load_state_dict(saved)  # a DDP checkpoint resumes in one process...
    assert again.state_dict() == saved  # ...and what it saves loads back the same
    assert {k: bool(v.equal(again.masks()[k])) for k, v in pruner.masks().items()} == dict.fromkeys(
        saved["budgets"], True
    )


SAME_DATA_CASES = [
    "global-before",
    "erk-before",
    "2:4-before",
    "srste-2:4-after",
    "ties-global",
    "gmp-global",
    "oneshot-uniform",
]
# The magnitude baselines keep a whole mask per layer, which DDP allows (FSDP2 does not yet).
BASELINE_CASES = {
    "gmp-global": {"budget": "global", "order": "before", "method": pdprune.baselines.GMP()},
    "oneshot-uniform": {"budget": "uniform", "order": "after", "method": pdprune.baselines.OneShot()},
}


def _cases() -> dict:
    from tests.test_fsdp import CASES

    return {**CASES, **BASELINE_CASES}


def _same_data_worker(rank: int, world: int, store_file: str, result_dir: str) -> None:
    """Every rank trains on the whole batch, as the FSDP2 tests do: DDP's averaged gradients
    then equal one process's, and the pruned result must too."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.test_fsdp import _config, _model, _outcome, _train

    start_rank(rank, world, store_file)
    try:
        results = {}
        for name in SAME_DATA_CASES:
            case = _cases()[name]
            model = _model(case)
            if case["order"] == "before":
                pruner = pdprune.prepare(model, _config(case))
                wrapped = DistributedDataParallel(model)
            else:
                wrapped = DistributedDataParallel(model)
                pruner = pdprune.prepare(wrapped, _config(case))
            preview: list = []
            _train(wrapped, pruner, preview, case.get("lr", 0.05))
            results[name] = _outcome(model, pruner, preview)
        torch.save(results, os.path.join(result_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears down while another still talks to it
    finally:
        dist.destroy_process_group()
    exit_rank()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("world", [2, 4], ids=["2 ranks", "4 ranks"])
def test_ddp_prunes_exactly_as_one_process(tmp_path, world):
    from tests.test_fsdp import _config, _model, _outcome, _train

    mp.spawn(_same_data_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for name in SAME_DATA_CASES:
        case = _cases()[name]
        model = _model(case)
        pruner = pdprune.prepare(model, _config(case))
        preview: list = []
        with one_thread():
            _train(model, pruner, preview, case.get("lr", 0.05))
            expected = _outcome(model, pruner, preview)
        for rank in ranks:
            got = rank[name]
            assert got["budgets"] == expected["budgets"], name
            assert got["kept"] == expected["kept"], name
            for key, value in expected["weights"].items():
                assert torch.equal(got["weights"][key], value), (name, key)

"""Channel pruning under FSDP2 and DDP gives what one process gives.

Every rank trains on the whole batch, so the averaged gradients equal one process's and any
difference would come from pruning over sharded weights: the channels kept and the final
weights are compared exactly with a single-process run of the same model and data.
"""

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import pdprune
from tests.helpers import exit_rank, one_thread, start_rank

STEPS = 16


class Block(nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, 3, padding=1)
        self.norm = nn.BatchNorm2d(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))


class Residual(nn.Module):
    """Two blocks whose outputs a residual add couples into one channel group."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = Block(3, 10), Block(10, 10)
        self.head = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        return self.head((y + self.second(y)).mean((2, 3)))


def _cnn() -> nn.Module:
    # 10 and 6 channels: over 4 ranks FSDP2 leaves 3, 3, 3, 1 and 2, 2, 2, 0 rows.
    torch.manual_seed(0)
    return nn.Sequential(Block(3, 10), Block(10, 6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))


def _vit() -> nn.Module:
    """Attention heads: q, k and v rows stacked in one weight (three copies of each channel)."""
    from tests.test_channel_mha import TinyViT

    torch.manual_seed(0)
    return TinyViT(dim=16, heads=4, depth=2, classes=4)


def _mlp() -> nn.Module:
    from tests.helpers import mlp

    return mlp(seed=0)


def _batch(name: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    from tests.helpers import batch

    if name.startswith("mlp"):
        return batch(step)
    if name == "vit":
        g = torch.Generator().manual_seed(3000 + step)
        return torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 4, (8,), generator=g)
    g = torch.Generator().manual_seed(2000 + step)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)


CASES = {
    "mlp": (_mlp, pdprune.PDP()),
    "mlp-l1": (_mlp, pdprune.baselines.L1Channel()),
    "cnn": (_cnn, pdprune.PDP()),
    "vit": (_vit, pdprune.PDP()),
}


def _config(method) -> pdprune.PruneConfig:
    schedule = pdprune.Schedule(total_steps=STEPS, warmup=3, ramp=8)
    return pdprune.PruneConfig(sparsity=0.5, pattern="channel", schedule=schedule, method=method)


def _units(model: nn.Module) -> list[nn.Module]:
    """What fully_shard wraps: every Linear of the MLP, every block of the CNN, every encoder
    layer of the ViT, then the model."""
    layers = list(model.encoder.layers) if hasattr(model, "encoder") else []
    return [m for m in model.children() if isinstance(m, (nn.Linear, Block))] + layers + [model]


def _train(name: str, model: nn.Module, pruner, wrapped: nn.Module | None = None) -> dict:
    run = wrapped if wrapped is not None else model
    optimizer = torch.optim.SGD(run.parameters(), lr=0.05, momentum=0.9)
    for step in range(STEPS):
        x, y = _batch(name, step)
        loss = nn.functional.cross_entropy(run(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
    before = pruner.state_dict()
    pruner.finalize()
    weights = {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
    }
    return {"kept": pruner.masks(), "weights": weights, "state": before}


def _errors(fully_shard) -> dict[str, str]:
    """What each rank raises: a group split over two fully_shard units, prepare after sharding,
    shrink() on sharded layers."""
    errors = {}
    torch.manual_seed(0)
    model = Residual()
    x = torch.randn(2, 3, 8, 8)
    pruner = pdprune.prepare(model, _config(pdprune.PDP()), example_inputs=x)
    fully_shard(model.first)
    fully_shard(model.second)
    fully_shard(model)
    try:
        for _ in range(6):
            model(x).sum().backward()
            pruner.step()
    except ValueError as error:
        errors["split"] = str(error)
    model = _cnn()
    for unit in _units(model):
        fully_shard(unit)
    try:
        pdprune.prepare(model, _config(pdprune.PDP()), example_inputs=x)
    except ValueError as error:
        errors["after"] = str(error)
    model = _cnn()
    pruner = pdprune.prepare(model, _config(pdprune.PDP()), example_inputs=x)
    for unit in _units(model):
        fully_shard(unit)
    pruner.finalize()
    try:
        pruner.shrink()
    except RuntimeError as error:
        errors["shrink"] = str(error)
    return errors


def _docs_replay(model: nn.Module, pruner_state: dict) -> list[int]:
    """The docs' way to shrink after sharded channel pruning, run as written; rank 0's widths."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from tests.test_docs import DOCS, run_example

    namespace = {
        "model": model,
        "dist": dist,
        "pdprune": pdprune,
        "get_model_state_dict": get_model_state_dict,
        "StateDictOptions": StateDictOptions,
        "MyModel": _cnn,
        "config": _config(pdprune.PDP()),
        "batch": _batch("cnn", 0)[0],
        "pruner_state": pruner_state,
    }
    run_example(DOCS / "distributed.md", "fsdp2-channel-shrink", namespace)
    plain = namespace.get("plain")
    return [plain[0].conv.out_channels, plain[1].conv.out_channels] if plain is not None else []


def _worker(rank: int, world: int, store_file: str, result_dir: str, wrap: str) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    start_rank(rank, world, store_file)
    try:
        results = {}
        for name, (build, method) in CASES.items():
            model = build()
            pruner = pdprune.prepare(model, _config(method), example_inputs=_batch(name, 0)[0])
            if wrap == "fsdp2":
                for unit in _units(model):
                    fully_shard(unit)
                results[name] = _train(name, model, pruner)
                if name == "cnn" and world == 2:
                    results["shrunk"] = _docs_replay(model, results[name]["state"])
            else:
                results[name] = _train(name, model, pruner, DistributedDataParallel(model))
        if wrap == "fsdp2" and world == 2:
            results["errors"] = _errors(fully_shard)
        torch.save(results, os.path.join(result_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears down while another still talks to it
    finally:
        dist.destroy_process_group()
    exit_rank()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize(
    "wrap, world",
    [("fsdp2", 2), pytest.param("fsdp2", 4, marks=pytest.mark.slow), ("ddp", 2)],
    ids=["FSDP2 2 ranks", "FSDP2 4 ranks", "DDP"],
)
def test_channel_pruning_over_ranks_keeps_what_one_process_keeps(tmp_path, wrap, world):
    mp.spawn(_worker, args=(world, str(tmp_path / "store"), str(tmp_path), wrap), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for name, (build, method) in CASES.items():
        model = build()
        pruner = pdprune.prepare(model, _config(method), example_inputs=_batch(name, 0)[0])
        with one_thread():
            expected = _train(name, model, pruner)
        for rank in ranks:
            got = rank[name]
            assert set(got["kept"]) == set(expected["kept"]), name
            for group, keep in expected["kept"].items():
                assert torch.equal(got["kept"][group], keep), (name, group)
                assert 0 < int(keep.sum()) < keep.numel(), (name, group)
            for key, value in expected["weights"].items():
                assert torch.equal(got["weights"][key], value), (name, key)
    if wrap != "fsdp2" or world != 2:
        return
    cnn = _cnn()
    pruner = pdprune.prepare(cnn, _config(pdprune.PDP()), example_inputs=_batch("cnn", 0)[0])
    with one_thread():
        kept = _train("cnn", cnn, pruner)["kept"]
    assert ranks[0]["shrunk"] == [int(kept["0.conv"].sum()), int(kept["1.conv"].sum())], kept
    assert ranks[1]["shrunk"] == []
    for rank in ranks:  # every rank raises, none waits for the others in a collective
        errors = rank["errors"]
        assert "spans layers that are in different fully_shard units" in errors["split"]
        assert "second.norm" in errors["split"] and "exclude=" in errors["split"]
        assert "call pdprune.prepare before fully_shard" in errors["after"]
        assert "cannot shrink while their rows are spread over ranks" in errors["shrink"]


def test_a_model_gathered_after_sharded_channel_pruning_shrinks_on_one_process(tmp_path):
    """The route the docs give: the run's last pruner state and its full weights, loaded into a
    plain model on one process, finalize to the same channels and shrink there."""
    name = "cnn"
    model = _cnn()
    pruner = pdprune.prepare(model, _config(pdprune.PDP()), example_inputs=_batch(name, 0)[0])
    trained = _train(name, model, pruner)
    fresh = _cnn()
    fresh.load_state_dict(trained["weights"])
    replay = pdprune.prepare(fresh, _config(pdprune.PDP()), example_inputs=_batch(name, 0)[0])
    replay.load_state_dict(trained["state"])
    replay.finalize()
    for group, keep in trained["kept"].items():
        assert torch.equal(replay.masks()[group], keep), group
    replay.shrink()
    kept = sorted(int(keep.sum()) for keep in trained["kept"].values())
    assert sorted([fresh[0].conv.out_channels, fresh[1].conv.out_channels]) == kept
    assert fresh[4].in_features == fresh[1].conv.out_channels

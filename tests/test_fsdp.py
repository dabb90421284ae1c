"""Under FSDP2 (fully_shard, DTensor weights) pruning gives what one process gives.

Every rank trains on the whole batch, so the averaged gradients equal one process's bit for bit
and any difference would come from pruning over sharded weights: the budgets, the hard masks
and the counts are compared exactly with a single-process run of the same model and data.
"""

import os
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import pdprune
from tests.helpers import exit_rank, one_thread, start_rank

STEPS = 24
CASES = {
    "global-before": {"budget": "global", "order": "before"},
    "global-after": {"budget": "global", "order": "after"},
    "erk-before": {"budget": "erk", "order": "before"},
    "uniform-before": {"budget": "uniform", "order": "before"},
    "2:4-before": {"pattern": "2:4", "order": "before"},
    "srste-2:4-after": {"pattern": "2:4", "order": "after", "method": "srste"},
    # Weights on a coarse grid and no updates: many equal magnitudes at every cut, on both ranks.
    "ties-global": {"budget": "global", "order": "before", "lr": 0.0, "grid": 4},
    "ties-uniform": {"budget": "uniform", "order": "after", "lr": 0.0, "grid": 4},
}


def _config(case: dict) -> pdprune.PruneConfig:
    from tests.helpers import config

    settings = {k: v for k, v in case.items() if k not in ("order", "lr", "grid")}
    if "pattern" in settings:
        schedule = pdprune.Schedule(total_steps=STEPS, warmup=4, ramp=10)
        method = pdprune.baselines.SRSTE() if settings.get("method") == "srste" else pdprune.PDP()
        return pdprune.PruneConfig(pattern=settings["pattern"], schedule=schedule, method=method)
    return config(total=STEPS, warmup=4, ramp=10, **settings)


def _model(case: dict) -> nn.Module:
    from tests.helpers import mlp

    model = mlp(seed=0)
    if "grid" in case:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.round(parameter * case["grid"]) / case["grid"])
    return model


def _train(model: nn.Module, pruner, preview: list, lr: float) -> None:
    from tests.helpers import batch

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for step in range(STEPS):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
        if step == 1:  # during warm-up: local, fixes nothing
            preview.append(pruner.report())


def _outcome(model: nn.Module, pruner, preview: list) -> dict:
    report = pruner.finalize()
    full = {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
    }
    return {
        "budgets": dict(pruner.budgets),
        "weights": full,
        "kept": [layer.achieved_sparsity for layer in report.layers],
        "preview_notes": [layer.note for layer in preview[0].layers],
    }


def _errors(rank: int, fully_shard) -> dict[str, str]:
    """What each rank raises for a NaN on one rank's rows and for a baseline FSDP2 cannot run."""
    from tests.helpers import batch

    errors = {}
    model = _model({})
    pruner = pdprune.prepare(model, _config({"budget": "global"}))
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer)
    fully_shard(model)
    if rank == 1:
        with torch.no_grad():
            model[2].weight.to_local()[0, 0] = float("nan")
    try:
        pruner.finalize()  # warm-up has not ended: fixes the budgets, then hardens
    except FloatingPointError as error:
        errors["nan"] = str(error)
    model = _model({})
    config = _config({"budget": "uniform"})
    pruner = pdprune.prepare(
        model, pdprune.PruneConfig(**{**vars(config), "method": pdprune.baselines.GMP()})
    )
    fully_shard(model)
    try:
        for step in range(6):
            model(batch(step)[0]).sum().backward()
            pruner.step()
    except ValueError as error:
        errors["gmp"] = str(error)
    try:  # a checkpoint of a sharded model: refused before anything is written
        pdprune.export.save_sparse(
            model, Path(os.environ.get("TMPDIR", "/tmp")) / f"never-{rank}.safetensors"
        )
    except ValueError as error:
        errors["export"] = str(error)
    # 2:4 groups along a transposed convolution's rows: 12 rows, 6 per rank, so groups straddle.
    model = nn.Sequential(nn.ConvTranspose1d(12, 4, 1))
    schedule = pdprune.Schedule(total_steps=4, warmup=0, ramp=0)
    pruner = pdprune.prepare(model, pdprune.PruneConfig(pattern="2:4", schedule=schedule))
    fully_shard(model)
    try:
        pruner.finalize()
    except ValueError as error:
        errors["straddle"] = str(error)
    return errors


HSDP_CASES = ["global-before", "2:4-before"]


def _hsdp(fully_shard) -> tuple[dict, str]:
    """HSDP on a 2 x 2 mesh (rows split over one dimension, replicated over the other): the
    outcome of each case in HSDP_CASES; and the error for weights split along their columns."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    outcomes = {}
    for name in HSDP_CASES:
        case = CASES[name]
        model = _model(case)
        pruner = pdprune.prepare(model, _config(case))
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        preview: list = []
        _train(model, pruner, preview, case.get("lr", 0.05))
        outcomes[name] = _outcome(model, pruner, preview)
    model = _model({})
    pruner = pdprune.prepare(model, _config({"budget": "uniform"}))
    fully_shard(model, mesh=mesh["shard"], shard_placement_fn=lambda p: Shard(1) if p.dim() == 2 else None)
    try:
        pruner.finalize()
        layout = "finalized"
    except ValueError as error:
        layout = str(error)
    return outcomes, layout


def _run_sharded(
    rank: int, fully_shard, stop: int, save: Path | None = None, load: Path | None = None
) -> dict:
    """Global budgets, PDP, steps up to ``stop``: from scratch or from a checkpoint in ``load``
    (model and optimizer through torch.distributed.checkpoint, the pruner's state as JSON), saving
    one in ``save`` at the end. Returns the whole final weights after finalize() when ``stop`` is the end."""
    import json

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from tests.helpers import batch

    model = _model({})
    pruner = pdprune.prepare(model, _config({"budget": "global"}))
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = 0
    if load is not None:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(load))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        pruner.load_state_dict(json.loads((load / "pruner.json").read_text()))
        start = pruner.step_count
    for step in range(start, stop):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
    if save is not None:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(save))
        if rank == 0:
            (save / "pruner.json").write_text(json.dumps(pruner.state_dict()))
        dist.barrier()
        return {}
    pruner.finalize()
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def _worker(rank: int, world: int, store_file: str, result_dir: str, names: list[str]) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from torch.distributed.fsdp import fully_shard

    start_rank(rank, world, store_file)
    try:
        results = {}
        for name in names:
            case = CASES[name]
            model = _model(case)

            def shard(model=model):
                for layer in (model[0], model[2], model[4]):
                    fully_shard(layer)
                fully_shard(model)

            if case["order"] == "before":
                pruner = pdprune.prepare(model, _config(case))
                shard()
            else:
                shard()
                pruner = pdprune.prepare(model, _config(case))
            preview: list = []
            _train(model, pruner, preview, case.get("lr", 0.05))
            results[name] = _outcome(model, pruner, preview)
        if world == 4:
            results["hsdp"], results["layout"] = _hsdp(fully_shard)
        if world == 2:
            results["errors"] = _errors(rank, fully_shard)
            # Interrupted in the ramp (step 9 of 24) and resumed from a sharded checkpoint.
            checkpoint = Path(result_dir) / "checkpoint"
            results["uninterrupted"] = _run_sharded(rank, fully_shard, STEPS)
            _run_sharded(rank, fully_shard, 9, save=checkpoint)
            results["resumed"] = _run_sharded(rank, fully_shard, STEPS, load=checkpoint)
        torch.save(results, os.path.join(result_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears down while another still talks to it
    finally:
        dist.destroy_process_group()
    exit_rank()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize(
    "world, names",
    [(2, list(CASES)), (4, ["global-before", "ties-global", "2:4-before"])],
    ids=["2 ranks", "4 ranks"],
)
def test_fsdp2_prunes_exactly_as_one_process(tmp_path, world, names):
    mp.spawn(_worker, args=(world, str(tmp_path / "store"), str(tmp_path), names), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for name in names:
        case = CASES[name]
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
        notes = ranks[0][name]["preview_notes"]
        if case.get("budget") == "global":
            assert all("previewed as uniform" in note for note in notes), notes
        else:
            assert not any("previewed" in note for note in notes), notes
    if world == 4:
        for name in HSDP_CASES:
            case = CASES[name]
            model = _model(case)
            pruner = pdprune.prepare(model, _config(case))
            preview = []
            with one_thread():
                _train(model, pruner, preview, case.get("lr", 0.05))
                expected = _outcome(model, pruner, preview)
            for rank in ranks:
                got = rank["hsdp"][name]
                assert got["budgets"] == expected["budgets"] and got["kept"] == expected["kept"], name
                for key, value in expected["weights"].items():
                    assert torch.equal(got["weights"][key], value), ("hsdp", name, key)
        for rank in ranks:
            assert "0.weight is sharded as (Shard(dim=1),)" in rank["layout"], rank["layout"]
            assert "exclude=[...]" in rank["layout"]
    if world != 2:
        return
    for rank in ranks:
        for key, value in rank["uninterrupted"].items():
            assert torch.equal(rank["resumed"][key], value), key
    for rank in ranks:  # every rank raises, none waits for the others in a collective
        assert "2.weight holds 1 NaN" in rank["errors"]["nan"]
        assert "GMP keeps a whole mask per layer" in rank["errors"]["gmp"]
        assert "prune with PDP" in rank["errors"]["gmp"]
        assert "0.weight: 2:4 groups run along dim 0" in rank["errors"]["straddle"]
        assert "6 rows per rank" in rank["errors"]["straddle"]
        assert "is sharded across ranks (FSDP2)" in rank["errors"]["export"]
        assert "full_state_dict=True" in rank["errors"]["export"]


def _finalize_alone(rank: int, store_file: str, result_dir: str) -> None:
    """After warm-up (budgets fixed) rank 1 finalizes and rank 0 does not."""
    import datetime
    import json

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from torch.distributed.fsdp import fully_shard

    from pdprune.engine import collective
    from tests.helpers import batch

    collective.WARN_AFTER = datetime.timedelta(seconds=1)
    collective.MEET_TIMEOUT = datetime.timedelta(seconds=4)
    start_rank(rank, 2, store_file)
    store = dist.distributed_c10d._get_default_store()
    try:
        model = _model({})
        pruner = pdprune.prepare(model, _config({"budget": "global"}))
        fully_shard(model)
        for step in range(6):  # past warm-up: the budgets are fixed, every rank was there
            model(batch(step)[0]).sum().backward()
            pruner.step()
        if rank == 1:
            started = time.monotonic()
            try:
                pruner.finalize()
                outcome = "finalized"
            except RuntimeError as error:
                outcome = f"error: {error}"
            record = {"seconds": time.monotonic() - started, "outcome": outcome}
            Path(result_dir, "rank1.json").write_text(json.dumps(record))
            store.set("done", "1")
        else:
            store.wait(["done"], datetime.timedelta(seconds=60))
    finally:
        dist.destroy_process_group()
    exit_rank()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_a_rank_that_hardens_sharded_weights_alone_fails_fast_and_says_why(tmp_path):
    import json

    mp.spawn(_finalize_alone, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    record = json.loads((tmp_path / "rank1.json").read_text())
    assert record["outcome"].startswith("error") and record["seconds"] < 30
    assert (
        "reached finalize(), which all-reduces over the rows of weights that FSDP2 shards"
        in record["outcome"]
    )
    assert "rank(s) [0]" in record["outcome"]

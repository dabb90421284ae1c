"""The one collective the engine makes under torch.distributed: agreeing on per-layer budgets.

Budgets are fixed once, when pruning starts, from rank 0's view, so every rank prunes the same
layers equally. That happens inside ``step()`` (every rank calls it) or, if warm-up has not
ended, inside ``finalize()``; a rank that gets there alone would wait in the broadcast until the
process group's timeout. So the ranks first meet at the store with a short deadline, and a rank
left alone fails with a message naming the call every rank must make.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

__all__ = ["MEET_TIMEOUT", "distributed", "shared_values"]

#: How long a rank waits for the others at a collective pruner call before it gives up.
MEET_TIMEOUT = datetime.timedelta(seconds=120)

_meetings = 0


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shared_values(values: list[float], device: torch.device, call: str) -> list[float]:
    """``values`` as rank 0 has them, on every rank; ``call`` names the pruner call for errors."""
    if not distributed():
        return values
    _meet(call)
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    shared = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(shared, src=0)
    return shared.tolist()


def _meet(call: str) -> None:
    global _meetings
    _meetings += 1
    store = dist.distributed_c10d._get_default_store()
    rank, world = dist.get_rank(), dist.get_world_size()
    prefix = f"pdprune/budgets/{_meetings}"
    store.set(f"{prefix}/{rank}", call)
    try:
        store.wait([f"{prefix}/{r}" for r in range(world)], MEET_TIMEOUT)
    except RuntimeError as error:  # the store's timeout
        arrived = [r for r in range(world) if store.check([f"{prefix}/{r}"])]
        raise RuntimeError(
            f"pdprune: rank {rank} reached {call}, which fixes the per-layer budgets for all ranks, but only "
            f"rank(s) {arrived} of {world} got there within {MEET_TIMEOUT.total_seconds():.0f} s. Under "
            "torch.distributed every rank must call pruner.step() after each optimizer step, and "
            "pruner.finalize() "
            f"together; report(), masks() and state_dict() are local and may be called on one rank. ({error})"
        ) from None

"""The one collective the engine makes under torch.distributed: agreeing on per-layer budgets.

Budgets are fixed once, when pruning starts, from rank 0's view, so every rank prunes the same
layers equally. That happens inside ``step()`` (every rank calls it) or, if warm-up has not
ended, inside ``finalize()``. A rank that gets there alone would wait silently in the broadcast
until the process group's timeout, so the ranks first meet at the store: a rank kept waiting
warns after ``WARN_AFTER`` which ranks are missing and which calls every rank must make, and
raises with that message after ``MEET_TIMEOUT``. A rank that is merely slow (evaluating, saving)
only costs a warning.
"""

from __future__ import annotations

import datetime
import time
import warnings

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

__all__ = ["MEET_TIMEOUT", "WARN_AFTER", "distributed", "shared_values"]

#: How long a rank waits for the others at a collective pruner call before it raises.
MEET_TIMEOUT: datetime.timedelta = default_pg_timeout
#: How long it waits before it warns which ranks are missing.
WARN_AFTER = datetime.timedelta(seconds=30)

_POLL = datetime.timedelta(seconds=1)
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
    keys = [f"{prefix}/{r}" for r in range(world)]
    started, warned = time.monotonic(), False
    while True:
        try:
            store.wait(keys, _POLL)
            return
        except RuntimeError:  # the store's timeout: not everyone is here yet
            pass
        waited = time.monotonic() - started
        missing = [r for r in range(world) if not store.check([keys[r]])]
        message = (
            f"pdprune: rank {rank} reached {call}, which fixes the per-layer budgets for all ranks, "
            f"and has waited {waited:.0f} s for rank(s) {missing}. Under torch.distributed every rank must "
            f"call pruner.step() after each optimizer step, and pruner.finalize() together; report(), "
            f"masks() and state_dict() are local and may be called on one rank."
        )
        if waited >= MEET_TIMEOUT.total_seconds():
            raise RuntimeError(message)
        if not warned and waited >= WARN_AFTER.total_seconds():
            warnings.warn(message, stacklevel=4)
            warned = True

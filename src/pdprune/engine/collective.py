"""Collective pruner calls under torch.distributed, and the meeting that guards them.

Budgets are fixed once, when pruning starts, from rank 0's view, so every rank prunes the same
layers equally. That happens inside ``step()`` (every rank calls it) or, if warm-up has not
ended, inside ``finalize()``. Under FSDP2 hardening and a few views also all-reduce statistics of
sharded weights (see :mod:`pdprune.sharding`). A rank that gets to a collective alone
would wait silently until the process group's timeout, so the ranks first meet at the store: a
rank kept waiting warns after ``WARN_AFTER`` which ranks are missing and which calls every rank
must make, and raises with that message after ``MEET_TIMEOUT``. A rank that is merely slow
(evaluating, saving) only costs a warning.
"""

from __future__ import annotations

import datetime
import time
import warnings

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

__all__ = ["MEET_TIMEOUT", "WARN_AFTER", "distributed", "meet", "shared_values"]

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
    meet(call, "which fixes the per-layer budgets for all ranks")
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    shared = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(shared, src=0)
    return shared.tolist()


def meet(call: str, what: str) -> None:
    """Wait at the store until every rank has reached a collective ``call`` (``what`` it does,
    for the message), or fail with a message naming the missing ranks after ``MEET_TIMEOUT``."""
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
            f"pdprune: rank {rank} reached {call}, {what}, and has waited {waited:.0f} s for rank(s) "
            f"{missing}. Under torch.distributed every rank must call pruner.step() after each "
            f"optimizer step, and pruner.finalize() together (under FSDP2 also masks() and "
            f"current_sparsity() during an N:M ramp); report() and state_dict() are local and may be "
            f"called on one rank."
        )
        if waited >= MEET_TIMEOUT.total_seconds():
            raise RuntimeError(message)
        if not warned and waited >= WARN_AFTER.total_seconds():
            warnings.warn(message, stacklevel=4)
            warned = True

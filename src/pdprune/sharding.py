"""Weights that FSDP2 (``torch.distributed.fsdp.fully_shard``) holds as sharded DTensors.

Inside a forward FSDP2 gathers each layer's whole weight, so PDP's masks and thresholds there
need nothing from pdprune. Outside it each rank holds rows ``[r * c, (r + 1) * c)`` of every
weight (``Shard(0)`` on a one-dimensional mesh; under HSDP, on the shard dimension of a 2-D
mesh, with replicas along the other), and what the pruner computes from the weights
there (global budgets, hard masks, counts) runs on each rank's rows with a few all-reduces of
histograms and counts, through :class:`Shards`. These are collective: every rank makes the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Shards", "is_sharded", "local_along", "local_part", "row_range", "shards_of"]


def _dtensor_type() -> type | None:
    if not dist.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(tensor: torch.Tensor) -> bool:
    """True for a DTensor split across ranks (any ``Shard`` placement)."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(tensor, dtensor):
        return False
    return any(placement.is_shard() for placement in tensor.placements)


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """What this rank holds of ``tensor`` (the tensor itself unless it is a DTensor); in-place
    changes to it change the DTensor."""
    dtensor = _dtensor_type()
    return tensor.to_local() if dtensor is not None and isinstance(tensor, dtensor) else tensor


def row_range(rows: int, index: int, count: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` that shard ``index`` of ``count`` holds of ``rows``: FSDP2's
    even split (``torch.chunk``), so the last ranks may hold fewer rows or none."""
    per_shard = -(-rows // count)
    start = min(index * per_shard, rows)
    return start, min(start + per_shard, rows)


def local_along(tensor: torch.Tensor, values: torch.Tensor, dim: int, name: str) -> torch.Tensor:
    """The part of ``values`` (one per index along ``tensor``'s ``dim``) that applies to what
    this rank holds of ``tensor`` (``name``, for errors): its rows' part along dim 0 of a sharded
    tensor, else all."""
    if dim != 0 or not is_sharded(tensor):
        return values
    shards = shards_of(tensor, name)
    start, stop = row_range(tensor.shape[0], shards.index, shards.count)
    return values[start:stop]


@dataclass(frozen=True)
class Shards:
    """The ranks across which a weight's rows are split, and this rank's place among them."""

    group: dist.ProcessGroup
    index: int
    count: int

    def reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        """All-reduce ``tensor`` ("sum" or "max") over the shards; NCCL's copy travels on the GPU."""
        device = tensor.device
        if dist.get_backend(self.group) == "nccl" and device.type != "cuda":
            tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        else:
            tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=self.group)
        return tensor.to(device)

    @property
    def shard(self) -> tuple[int, int]:
        return self.index, self.count


def shards_of(tensor: torch.Tensor, name: str) -> Shards:
    """The :class:`Shards` of a sharded ``tensor``: the ranks of the mesh dimension that splits
    its rows (FSDP2's one dimension, or HSDP's shard dimension; replicas along the others
    compute the same). A clear error for layouts pdprune cannot split its selections over."""
    mesh = tensor.device_mesh  # type: ignore[attr-defined]
    placements = tuple(tensor.placements)  # type: ignore[attr-defined]
    split = [d for d, placement in enumerate(placements) if placement.is_shard()]
    rows_only = len(split) == 1 and placements[split[0]].is_shard(dim=0)
    if not rows_only or not all(p.is_shard() or p.is_replicate() for p in placements):
        raise ValueError(
            f"{name} is sharded as {placements} over a {mesh.ndim}-dimensional device mesh; pdprune "
            "prunes weights whose rows are split over one mesh dimension and replicated over any "
            "others, which is what fully_shard(module) does on a 1-D mesh and HSDP on a 2-D one. "
            "Leave tensor-parallel layers out with exclude=[...], or shard them with fully_shard alone."
        )
    return Shards(mesh.get_group(split[0]), mesh.get_local_rank(split[0]), mesh.size(split[0]))

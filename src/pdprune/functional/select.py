"""Exact selection of the largest magnitudes by counting, for whole or sharded tensors.

The float32 bit patterns of magnitudes (values >= 0) order as integers, so the k-th largest
magnitude is found a byte at a time from 256-bin histograms: four passes, no sort, no copy of
all magnitudes at once. Across shards of one tensor (FSDP2) only the histograms and a few counts
travel, through a ``reduce`` that sums (or takes the maximum) over the ranks; the result equals
that of the whole tensor on one process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["Reduce", "magnitude_bits", "radix_select", "top_magnitude_mask"]

#: ``reduce(tensor, op)`` with ``op`` "sum" or "max": the elementwise result over every shard,
#: returned on every rank. The default, for whole tensors, returns the tensor as it is.
Reduce = Callable[[torch.Tensor, str], torch.Tensor]


def unsharded(tensor: torch.Tensor, op: str) -> torch.Tensor:
    return tensor


def magnitude_bits(weight: torch.Tensor) -> torch.Tensor:
    """The float32 magnitudes of ``weight``, flattened, as int32 bit patterns."""
    return weight.detach().reshape(-1).abs().float().view(torch.int32)


def radix_select(
    weights: Sequence[torch.Tensor], rank: int, reduce: Reduce = unsharded, excluded: Sequence[int] = ()
) -> tuple[int, int]:
    """The bit pattern of the ``rank``-th largest (1-based) magnitude over all ``weights``, and
    how many elements of that magnitude rank up to and including it. ``excluded`` leaves out one
    element per bit pattern listed (each tensor's largest, when budgets keep it regardless)."""
    prefix, remaining = 0, rank
    for level, shift in enumerate((24, 16, 8, 0)):
        histogram = torch.zeros(256, dtype=torch.int64)
        for weight in weights:
            bits = magnitude_bits(weight)
            if level:
                bits = bits[(bits >> (shift + 8)) == prefix]
            histogram += torch.bincount((bits >> shift) & 0xFF, minlength=256).cpu()
        histogram = reduce(histogram, "sum")
        for top in excluded:
            if top >= 0 and (top >> (shift + 8)) == prefix:
                histogram[(top >> shift) & 0xFF] -= 1
        descending = histogram.flip(0).cumsum(0)  # elements at or above each byte value
        position = int(torch.searchsorted(descending, torch.tensor([remaining])))
        above = int(descending[position - 1]) if position else 0
        prefix, remaining = (prefix << 8) | (255 - position), remaining - above
    return prefix, remaining


def top_magnitude_mask(
    weight: torch.Tensor, keep: int, reduce: Reduce = unsharded, shard: tuple[int, int] = (0, 1)
) -> torch.Tensor:
    """Boolean mask of ``weight`` keeping the ``keep`` largest magnitudes, the earlier element
    winning a tie. With ``shard=(index, count)`` and a ``reduce`` over the shards, ``weight`` is
    shard ``index`` of a tensor cut into ``count`` consecutive pieces of its flattened layout (rank
    order), ``keep`` counts over the whole tensor, and the mask is this shard's part of the
    whole tensor's mask."""
    cut, ties_needed = radix_select([weight], keep, reduce)
    bits = magnitude_bits(weight)
    equal = bits == cut
    index, count = shard
    ties = torch.zeros(count, dtype=torch.int64)
    ties[index] = int(equal.sum())
    ties = reduce(ties, "sum")
    take = min(max(ties_needed - int(ties[:index].sum()), 0), int(ties[index]))
    keep_mask = bits > cut
    if take:
        keep_mask[equal.nonzero()[:take, 0]] = True
    return keep_mask.view_as(weight)

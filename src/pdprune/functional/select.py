"""Exact selection of the largest magnitudes by counting, for whole or sharded tensors.

The float32 bit patterns of magnitudes (values >= 0) order as integers, so the k-th largest
magnitude is found 16 bits at a time from 65,536-bin histograms: two passes, no sort, no copy of
all magnitudes at once (on one CPU thread about 3x faster than 8-bit digits, whose second pass
must pick out a large share of the elements). Across shards of one tensor (FSDP2) only the
histograms and a few counts travel, through a ``reduce`` that sums (or takes the maximum) over
the ranks; the result equals that of the whole tensor on one process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["Reduce", "magnitude_bits", "radix_select", "top_magnitude_mask"]

#: ``reduce(tensor, op)`` with ``op`` "sum" or "max": the elementwise result over every shard,
#: returned on every rank. The default, for whole tensors, returns the tensor as it is.
Reduce = Callable[[torch.Tensor, str], torch.Tensor]

DIGITS = 1 << 16  # histogram bins per pass: 16 bits of the pattern at a time


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
    for high in (True, False):
        histogram = torch.zeros(DIGITS, dtype=torch.int64)
        for weight in weights:
            bits = magnitude_bits(weight)
            digits = bits >> 16 if high else bits[(bits >> 16) == prefix] & 0xFFFF
            histogram += torch.bincount(digits, minlength=DIGITS).cpu()
        histogram = reduce(histogram, "sum")
        for top in excluded:
            if top >= 0 and (high or top >> 16 == prefix):
                histogram[top >> 16 if high else top & 0xFFFF] -= 1
        descending = histogram.flip(0).cumsum(0)  # elements at or above each digit
        position = int(torch.searchsorted(descending, torch.tensor([remaining])))
        above = int(descending[position - 1]) if position else 0
        prefix, remaining = (prefix << 16) | (DIGITS - 1 - position), remaining - above
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

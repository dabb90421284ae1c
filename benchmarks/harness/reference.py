"""Definitions the library's faster code must equal: kept here so tests and benchmarks compare
against one copy."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pdprune.functional import keep_count

__all__ = ["ranked_budgets"]


def ranked_budgets(
    weights: Sequence[torch.Tensor], sparsity: float, fixed: Sequence[float | None] | None = None
) -> list[float]:
    """Global budgets by sorting every magnitude at once (each tensor's largest first, ties to
    the earlier position): the definition ``global_magnitude_budgets`` computes by counting, and
    what it did before, with a sort and index tensors over all weights together."""
    sizes = [w.numel() for w in weights]
    fixed = list(fixed) if fixed is not None else [None] * len(weights)
    free = [i for i, f in enumerate(fixed) if f is None]
    rest_keep = keep_count(sum(sizes), sparsity) - sum(
        keep_count(n, f) for n, f in zip(sizes, fixed) if f is not None
    )
    mags = torch.cat([weights[i].detach().reshape(-1).abs().float() for i in free])
    owner = torch.cat([torch.full((sizes[i],), slot) for slot, i in enumerate(free)])
    start = 0
    for i in free:
        mags[start + int(weights[i].detach().reshape(-1).abs().float().argmax())] = float("inf")
        start += sizes[i]
    order = torch.sort(mags, descending=True, stable=True).indices[:rest_keep]
    kept = torch.bincount(owner[order], minlength=len(free)).tolist()
    result: list[float] = [f if f is not None else 0.0 for f in fixed]
    for slot, i in enumerate(free):
        result[i] = 1.0 - kept[slot] / sizes[i]
    return result

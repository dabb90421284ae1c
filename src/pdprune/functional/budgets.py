"""Per-layer sparsity budgets: pure functions from weight magnitudes to per-tensor sparsities."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pdprune.functional.masks import check_finite, check_sparsity, keep_count

__all__ = ["global_magnitude_budgets"]


def global_magnitude_budgets(
    weights: Sequence[torch.Tensor],
    sparsity: float,
    fixed: Sequence[float | None] | None = None,
    names: Sequence[str] | None = None,
) -> list[float]:
    """Per-tensor sparsities from one magnitude ranking over all ``weights`` together.

    The overall sparsity across all tensors equals ``sparsity`` (to the nearest weight). Tensors
    whose entry in ``fixed`` is a number keep that sparsity; the remaining budget is spread over
    the others by the ranking. Each tensor keeps at least one weight. Ties in magnitude are broken
    by position so the result is deterministic.
    """
    r = check_sparsity(sparsity)
    fixed = list(fixed) if fixed is not None else [None] * len(weights)
    if len(fixed) != len(weights):
        raise ValueError("fixed must have one entry per weight tensor")
    if not weights:
        raise ValueError("no weight tensors to rank")
    sizes = [w.numel() for w in weights]
    total_keep = keep_count(sum(sizes), r)
    fixed_keep = sum(keep_count(n, f) for n, f in zip(sizes, fixed) if f is not None)
    free = [i for i, f in enumerate(fixed) if f is None]
    result: list[float] = [check_sparsity(f) if f is not None else 0.0 for f in fixed]
    if not free:
        return result
    free_sizes = [sizes[i] for i in free]
    rest_keep = total_keep - fixed_keep
    if rest_keep < len(free) or rest_keep > sum(free_sizes):
        raise ValueError(
            f"per-layer overrides fix {fixed_keep} kept weights, which leaves {rest_keep} for the "
            f"other {sum(free_sizes)} weights at overall sparsity {r}; loosen the overrides or "
            f"change the overall sparsity."
        )
    for i in free:
        check_finite(weights[i], names[i] if names is not None else f"weight tensor #{i}")
    device = weights[free[0]].device
    mags = torch.cat([weights[i].detach().reshape(-1).abs().float().to(device) for i in free])
    owner = torch.repeat_interleave(
        torch.arange(len(free), device=device), torch.tensor(free_sizes, device=device)
    )
    # Every tensor keeps its largest weight (ranked first), so no layer is cut off entirely and
    # the total stays exact.
    starts = torch.tensor([0, *free_sizes[:-1]], device=device).cumsum(0)
    largest = torch.stack([mags[s : s + n].argmax() for s, n in zip(starts.tolist(), free_sizes)]) + starts
    mags[largest] = float("inf")
    order = torch.sort(mags, descending=True, stable=True).indices[:rest_keep]
    kept = torch.bincount(owner[order], minlength=len(free)).tolist()
    for slot, i in enumerate(free):
        result[i] = 1.0 - kept[slot] / sizes[i]
    return result

"""Per-layer sparsity budgets: pure functions from weight magnitudes to per-tensor sparsities."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pdprune.functional.masks import check_sparsity, keep_count, nonfinite_error
from pdprune.functional.select import Reduce, magnitude_bits, radix_select, unsharded

__all__ = ["erk_budgets", "global_magnitude_budgets"]


def global_magnitude_budgets(
    weights: Sequence[torch.Tensor],
    sparsity: float,
    fixed: Sequence[float | None] | None = None,
    names: Sequence[str] | None = None,
    reduce: Reduce = unsharded,
) -> list[float]:
    """Per-tensor sparsities from one magnitude ranking over all ``weights`` together.

    The overall sparsity across all tensors equals ``sparsity`` (to the nearest weight). Tensors
    whose entry in ``fixed`` is a number keep that sparsity; the remaining budget is spread over
    the others by the ranking. Each tensor keeps at least one weight (its largest). Ties in
    magnitude go to the earlier tensor, so the result is deterministic.

    The ranking is never materialised: a radix select over the float32 bit patterns of the
    magnitudes (which order as integers) finds the cut in two histogram passes, 16 bits at a
    time, with one tensor's temporaries alive at a time. With sharded weights, pass each rank's
    local shards (the same tensors in the same order on every rank) and a ``reduce`` over the
    ranks: the budgets equal those of the whole tensors on one process.
    """
    total = reduce(torch.tensor([float(w.numel()) for w in weights], dtype=torch.float64), "sum")
    sizes = [int(n) for n in total.tolist()]
    result, free, rest_keep = _split_fixed(sizes, sparsity, fixed)
    if not free:
        return result
    chosen = [weights[i].detach() for i in free]
    bad = reduce(
        torch.tensor([float((~torch.isfinite(w)).sum()) for w in chosen], dtype=torch.float64), "sum"
    )
    for slot, count in enumerate(bad.tolist()):
        if count:
            name = names[free[slot]] if names is not None else f"weight tensor #{free[slot]}"
            raise nonfinite_error(name, int(count))
    # Every tensor keeps its largest weight (ranked first), so no layer is cut off entirely and
    # the total stays exact; the others are ranked without it.
    largest = reduce(
        torch.tensor([int(magnitude_bits(w).max()) if w.numel() else -1 for w in chosen], dtype=torch.int64),
        "max",
    ).tolist()
    wanted = rest_keep - len(free)  # how many of those others are kept
    kept = [1] * len(free)
    if wanted > 0:
        cut, ties_needed = radix_select(chosen, wanted, reduce, excluded=largest)
        local = [[int((b > cut).sum()), int((b == cut).sum())] for b in map(magnitude_bits, chosen)]
        counts = reduce(torch.tensor(local, dtype=torch.int64), "sum").tolist()
        for slot, ((above, equal), top) in enumerate(zip(counts, largest)):
            ties = min(equal - (top == cut), ties_needed)  # earlier tensors take the ties first
            kept[slot] += above - (top > cut) + ties
            ties_needed -= ties
    for slot, i in enumerate(free):
        result[i] = 1.0 - kept[slot] / sizes[i]
    return result


def erk_budgets(
    shapes: Sequence[Sequence[int]],
    sparsity: float,
    fixed: Sequence[float | None] | None = None,
) -> list[float]:
    """Per-tensor sparsities by Erdős-Rényi-Kernel (Evci et al. 2020, RigL).

    A tensor's density is proportional to ``sum(shape) / prod(shape)``, so small and thin layers
    (the stem, the classifier, depthwise convolutions) stay denser and large ones carry the cut;
    densities above 1 are capped and their excess spread over the rest. It depends on shapes
    only, so unlike the magnitude ranking it can never empty a layer at extreme sparsity. The
    overall sparsity is exact to the nearest weight; ``fixed`` works as in
    :func:`global_magnitude_budgets`.
    """
    sizes = [math.prod(shape) for shape in shapes]
    result, free, rest_keep = _split_fixed(sizes, sparsity, fixed)
    if not free:
        return result
    raw = {i: sum(shapes[i]) / sizes[i] for i in free}
    dense: set[int] = set()
    scale = 0.0
    while len(dense) < len(free):
        sparse = [i for i in free if i not in dense]
        scale = (rest_keep - sum(sizes[i] for i in dense)) / sum(raw[i] * sizes[i] for i in sparse)
        newly_dense = {i for i in sparse if scale * raw[i] >= 1.0}
        if not newly_dense:
            break
        dense |= newly_dense
    ideal = {i: float(sizes[i]) if i in dense else scale * raw[i] * sizes[i] for i in free}
    kept = {i: min(sizes[i], max(1, math.floor(ideal[i]))) for i in free}
    # The floor of one weight per layer and the rounding leave the total off by up to a weight per
    # layer; settle it a weight at a time, where the ideal share is least well served, until exact.
    shortfall = rest_keep - sum(kept.values())
    while shortfall:
        step = 1 if shortfall > 0 else -1
        movable = [i for i in free if 1 <= kept[i] + step <= sizes[i]]
        movable.sort(key=lambda i: (ideal[i] - kept[i]) * step, reverse=True)
        for i in movable[: abs(shortfall)]:
            kept[i] += step
            shortfall -= step
    for i in free:
        result[i] = 1.0 - kept[i] / sizes[i]
    return result


def _split_fixed(
    sizes: Sequence[int], sparsity: float, fixed: Sequence[float | None] | None
) -> tuple[list[float], list[int], int]:
    """Results pre-filled for fixed tensors, the free tensors' indices and the weights they keep."""
    r = check_sparsity(sparsity)
    fixed = list(fixed) if fixed is not None else [None] * len(sizes)
    if len(fixed) != len(sizes):
        raise ValueError("fixed must have one entry per weight tensor")
    if not sizes:
        raise ValueError("no weight tensors to budget")
    total_keep = keep_count(sum(sizes), r)
    fixed_keep = sum(keep_count(n, f) for n, f in zip(sizes, fixed) if f is not None)
    free = [i for i, f in enumerate(fixed) if f is None]
    result: list[float] = [check_sparsity(f) if f is not None else 0.0 for f in fixed]
    rest_keep = total_keep - fixed_keep
    free_size = sum(sizes[i] for i in free)
    if free and not fixed_keep and rest_keep < len(free):
        raise ValueError(
            f"sparsity {r} keeps {rest_keep} of {free_size} weights, fewer than the {len(free)} layers (each "
            f"keeps at least one); lower the sparsity or prune fewer layers."
        )
    if free and (rest_keep < len(free) or rest_keep > free_size):
        raise ValueError(
            f"per-layer overrides fix {fixed_keep} kept weights, which leaves {rest_keep} for the "
            f"other {free_size} weights at overall sparsity {r}; loosen the overrides or "
            f"change the overall sparsity."
        )
    return result, free, rest_keep

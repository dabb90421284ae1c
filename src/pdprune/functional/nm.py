"""N:M sparsity maths: at most N nonzeros in every group of M consecutive weights along the
reduction dimension (what sparse tensor cores accelerate). Pure functions, no state.

A group runs along ``dim`` with every other index fixed: for a Linear weight (out, in) that is
dim 1; for a Conv weight (out, in/groups, *kernel) also dim 1, i.e. along input channels at a
fixed (out, kernel position).
"""

from __future__ import annotations

import numbers

import torch

from pdprune.functional.masks import check_finite

__all__ = ["check_nm", "nm_hard_mask", "nm_threshold"]


def check_nm(n: int, m: int) -> tuple[int, int]:
    """Validate an N:M pattern (0 < N < M) and return it as plain ints."""
    for value, what in ((n, "N"), (m, "M")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"N:M needs whole numbers, got {what}={value!r}")
    n, m = int(n), int(m)
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M (keep N of every M weights), got {n}:{m}")
    return int(n), int(m)


def _groups(weight: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """Magnitudes in float32, shaped (*other dims, size // m, m) with groups along ``dim``."""
    size = weight.shape[dim]
    if size % m:
        raise ValueError(
            f"N:M with M={m} needs the reduction dimension to be a multiple of {m}, but dimension "
            f"{dim} of a weight of shape {tuple(weight.shape)} has size {size}"
        )
    moved = weight.detach().abs().float().movedim(dim, -1)
    return moved.reshape(*moved.shape[:-1], size // m, m)


def _ungroup(grouped: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
    moved_shape = like.movedim(dim, -1).shape
    return grouped.reshape(moved_shape).movedim(-1, dim)


def nm_threshold(
    weight: torch.Tensor, n: int, m: int, dim: int = 1, *, check: bool = True, name: str = "weight"
) -> torch.Tensor:
    """PDP's threshold per group: the midpoint between the N-th and (N+1)-th largest magnitude.

    Returned in float32 with the weight's shape (each weight sees its group's threshold), detached.
    """
    n, m = check_nm(n, m)
    groups = _groups(weight, m, dim)
    if check and not bool(torch.isfinite(groups.max())):  # NaN or inf somewhere
        check_finite(weight, name)
    top = torch.topk(groups, n + 1, dim=-1, sorted=True).values
    t = 0.5 * (top[..., n - 1 : n] + top[..., n : n + 1])
    return _ungroup(t.expand(*t.shape[:-1], m), weight, dim)


def nm_hard_mask(weight: torch.Tensor, n: int, m: int, dim: int = 1, name: str = "weight") -> torch.Tensor:
    """Boolean mask keeping exactly the N largest magnitudes of every group of M.

    Ties are broken by position (the earlier weight wins), so every group keeps exactly N.
    """
    n, m = check_nm(n, m)
    check_finite(weight, name)
    groups = _groups(weight, m, dim)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return _ungroup(keep, weight, dim)

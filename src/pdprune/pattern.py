"""Sparsity patterns: unstructured (any weights) or N:M (N kept in every group of M consecutive
weights along a layer's reduction dimension, which sparse tensor cores accelerate)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pdprune.functional import check_nm

__all__ = ["NM", "Pattern", "parse_pattern", "reduction_dim"]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class NM:
    """Keep ``n`` of every ``m`` consecutive weights along the reduction dimension."""

    n: int
    m: int

    def __post_init__(self) -> None:
        check_nm(self.n, self.m)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


Pattern = NM | None  # None: unstructured


def parse_pattern(value: str | NM | None) -> Pattern:
    """"unstructured" (or None) -> None; "2:4" or NM(2, 4) -> NM(2, 4)."""
    if value is None or isinstance(value, NM):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "unstructured":
            return None
        parts = text.split(":")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return NM(int(parts[0]), int(parts[1]))
    raise ValueError(f"pattern must be 'unstructured' or 'N:M' such as '2:4', got {value!r}")


def reduction_dim(module: nn.Module) -> int:
    """The weight dimension a layer sums over: input features/channels (dim 0 for transposed
    convolutions, whose weight is laid out (in, out/groups, *kernel))."""
    return 0 if isinstance(module, _TRANSPOSED) else 1

"""Masking rules: how a pruned tensor's weight is masked in forward, and how its mask evolves.

The pruner owns the schedule, budgets, hooks and checkpoints; a :class:`MaskMethod` only decides
what the layer computes with. PDP is the default; the baselines in :mod:`pdprune.baselines`
(GMP, one-shot magnitude) implement the same interface, so every method runs under exactly the
same schedule, budgets and training loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pdprune.functional import soft_masked_weight

if TYPE_CHECKING:
    from pdprune.nn.masking import MaskState
    from pdprune.schedule import Schedule

__all__ = ["MaskMethod", "PDP"]


class MaskMethod:
    """Base class. Override :meth:`masked_weight`; methods that store a mask also :meth:`update`."""

    name: ClassVar[str] = "base"
    # The patterns a method knows how to mask; a new method opts in to N:M and channels.
    supports_unstructured: ClassVar[bool] = True
    supports_nm: ClassVar[bool] = False
    supports_channels: ClassVar[bool] = False

    def masked_weight(self, weight: torch.Tensor, state: "MaskState") -> torch.Tensor:
        """The tensor the layer computes with in place of ``weight`` (differentiable)."""
        raise NotImplementedError

    def update(self, weight: torch.Tensor, state: "MaskState", step: int, schedule: "Schedule") -> None:
        """Called under no_grad after every optimizer step (and once at prepare)."""

    def progress(self, schedule: "Schedule", step: int) -> float:
        """Fraction of each layer's budget in force after ``step`` steps."""
        return schedule.progress(step)

    def final_mask(self, weight: torch.Tensor, state: "MaskState", sparsity: float) -> torch.Tensor:
        """The boolean keep-mask that hardening applies (the layer's N:M pattern, if it has one)."""
        return state.hard_mask(weight, sparsity)

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, **(asdict(self) if hasattr(self, "__dataclass_fields__") else {})}  # type: ignore[call-overload]


@dataclass(frozen=True)
class PDP(MaskMethod):
    """Parameter-free Differentiable Pruning: the soft mask sigmoid((w^2 - t^2) / tau) times w,
    with t recomputed from the current weights at every step (one t per layer, or one per group
    of M for N:M). tau comes from the config (or a per-layer override)."""

    name: ClassVar[str] = "pdp"
    supports_nm: ClassVar[bool] = True
    supports_channels: ClassVar[bool] = True

    def masked_weight(self, weight: torch.Tensor, state: "MaskState") -> torch.Tensor:
        return soft_masked_weight(weight, state.threshold(weight), state.tau)

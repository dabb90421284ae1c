"""Masking rules: how a pruned tensor's weight is masked in forward, and how its mask evolves.

The pruner owns the schedule, budgets, hooks and checkpoints; a :class:`MaskMethod` only decides
what the layer computes with. PDP is the default; the baselines in :mod:`pdprune.baselines`
(GMP, one-shot magnitude) implement the same interface, so every method runs under exactly the
same schedule, budgets and training loop.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pdprune.functional import soft_masked_weight
from pdprune.kernels import KERNEL_CHOICES, KernelChoice, kernels_for

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
    with t taken from the current weights (one t per layer, or one per group of M for N:M). tau
    comes from the config (or a per-layer override).

    Args:
        threshold_tolerance: an unstructured layer's t is reused from an earlier step while the
            number of weights it keeps (|w| > t) stays within this fraction of the target count
            (of the pruned count, if fewer are pruned than kept); a count (one pass over the
            weights) checks it before every use, and when it strays t is moved by a few secant
            steps on counts, or selected exactly if they fail. So at every step at most this
            fraction of the smaller side of the cut sits on the other side from the exact t. The
            default 0 selects t exactly at every step, as the paper does; 1e-2 makes large layers'
            steps markedly cheaper on CPU (see the README for the measured cost and accuracy).
            Hardening is always exact.
        kernels: how the mask's elementwise work runs: "auto" (fused by torch.compile for layers
            of 2^18 weights or more, when the compiler works on the device), "fused" (always,
            an error if the compiler fails) or "eager". Same results up to float rounding.
    """

    name: ClassVar[str] = "pdp"
    supports_nm: ClassVar[bool] = True
    supports_channels: ClassVar[bool] = True

    threshold_tolerance: float = 0.0
    kernels: KernelChoice = "auto"

    def __post_init__(self) -> None:
        tolerance = self.threshold_tolerance
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not 0.0 <= float(tolerance) < 0.5:
            raise ValueError(
                f"threshold_tolerance must be a number in [0, 0.5), got {tolerance!r}: it is the fraction "
                f"of a layer's kept (or pruned, if fewer) weights allowed on the other side of the cut while "
                f"t is reused (0, the default, selects t exactly at every step; 1e-2 is a usual value)."
            )
        object.__setattr__(self, "threshold_tolerance", float(self.threshold_tolerance))
        if self.kernels not in KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {', '.join(map(repr, KERNEL_CHOICES))}, got {self.kernels!r}")

    def masked_weight(self, weight: torch.Tensor, state: "MaskState") -> torch.Tensor:
        return soft_masked_weight(weight, state.threshold(weight), state.tau, kernels_for(weight, self.kernels))

    def fingerprint(self) -> dict[str, Any]:
        # The kernels change speed only; the tolerance is listed only when it is not the default,
        # so checkpoints saved before it existed still match.
        default = PDP.__dataclass_fields__["threshold_tolerance"].default
        tolerance = {} if self.threshold_tolerance == default else {"threshold_tolerance": self.threshold_tolerance}
        return {"name": self.name, **tolerance}

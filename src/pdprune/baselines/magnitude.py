"""Magnitude-pruning baselines with a stored binary mask: GMP and one-shot magnitude pruning.

Pruned weights are set to zero (as in Zhu & Gupta, 2017) and kept at zero after every optimizer
step, so momentum or weight decay cannot bring them back; only a mask refresh can regrow a weight,
and a zero never outranks a kept weight, so in practice masks only shrink.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from pdprune.method import MaskMethod

if TYPE_CHECKING:
    from pdprune.nn.masking import MaskState
    from pdprune.schedule import Schedule

__all__ = ["GMP", "OneShot"]


@dataclass(frozen=True)
class GMP(MaskMethod):
    """Gradual magnitude pruning: a hard magnitude mask recomputed every ``refresh_every`` steps
    while the sparsity ramps (use ``Schedule(shape="cubic")`` for Zhu & Gupta's schedule), then at
    the budget once the ramp ends, and fixed from then on."""

    refresh_every: int = 100
    name: ClassVar[str] = "gmp"
    supports_nm: ClassVar[bool] = False  # its ramp is a sparsity ramp, which N:M does not have

    def __post_init__(self) -> None:
        if isinstance(self.refresh_every, bool) or not isinstance(self.refresh_every, int) or self.refresh_every < 1:
            raise ValueError(f"refresh_every must be a positive int (steps), got {self.refresh_every!r}")

    def masked_weight(self, weight: torch.Tensor, state: "MaskState") -> torch.Tensor:
        mask = _stored_mask(state)
        if mask is None:
            return weight
        return weight * mask.to(weight.dtype)

    def _due(self, state: "MaskState", step: int, schedule: "Schedule") -> bool:
        if state.mask is None:
            return True
        if state.mask_sparsity == state.sparsity:
            return False
        at_budget = self.progress(schedule, step) >= 1.0
        return at_budget or (step - schedule.warmup_steps) % self.refresh_every == 0

    def update(self, weight: torch.Tensor, state: "MaskState", step: int, schedule: "Schedule") -> None:
        if state.sparsity == 0.0:
            return
        if self._due(state, step, schedule):
            state.mask = state.hard_mask(weight, state.sparsity)
            state.mask_sparsity = state.sparsity
        assert state.mask is not None
        weight.masked_fill_(~state.mask, 0)

    def final_mask(self, weight: torch.Tensor, state: "MaskState", sparsity: float) -> torch.Tensor:
        if state.mask is not None and state.mask_sparsity == sparsity:
            return state.mask
        return state.hard_mask(weight, sparsity)


@dataclass(frozen=True)
class OneShot(GMP):
    """One-shot magnitude pruning: the whole budget is cut when warm-up ends (the dense model's
    magnitudes), then the network fine-tunes with that mask fixed. The schedule's ramp is ignored.
    With an N:M pattern it keeps the N largest of every group of M."""

    name: ClassVar[str] = "oneshot"
    supports_nm: ClassVar[bool] = True

    def progress(self, schedule: "Schedule", step: int) -> float:
        return 1.0 if schedule.pruning_started(step) else 0.0


@torch.compiler.disable
def _stored_mask(state: "MaskState") -> torch.Tensor | None:
    # Read outside torch.compile graphs: the mask is replaced at every refresh.
    return state.mask

"""Magnitude-pruning baselines with a stored binary mask: GMP and one-shot magnitude pruning.

Pruned weights are set to zero (as in Zhu & Gupta, 2017) and kept at zero after every optimizer
step, so momentum or weight decay cannot bring them back; only a mask refresh can regrow a weight,
and a zero never outranks a kept weight, so in practice masks only shrink.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pdprune.functional import check_finite
from pdprune.methods.base import Method, pack_mask, unpack_mask
from pdprune.patterns.specs import NM, Unstructured

if TYPE_CHECKING:
    from pdprune.patterns.weights import WeightTarget
    from pdprune.schedule import Schedule

__all__ = ["GMP", "MagnitudeState", "OneShot"]


@dataclass
class MagnitudeState:
    """The stored keep-mask of one tensor and the sparsity it was computed at."""

    mask: torch.Tensor | None = None
    sparsity: float = 0.0
    refreshed: int = -1  # the last ramp interval (of ``GMP.refreshes``) whose mask was computed


@dataclass(frozen=True)
class GMP(Method):
    """Gradual magnitude pruning: a hard magnitude mask recomputed while the sparsity ramps (use
    ``Schedule(shape="cubic")`` for Zhu & Gupta's schedule), then at the budget once the ramp ends,
    and fixed from then on.

    Args:
        refreshes: how many times the mask is recomputed over the ramp, evenly spaced in time
            (every step when the ramp is shorter), so the sparsity in force follows the schedule
            whatever the run's length. A short fine-tune with a fixed interval would instead lag
            behind the schedule and jump to the budget at the end.
        refresh_every: recompute every this many steps instead (Zhu & Gupta's Δt).
    """

    refreshes: int = 100
    refresh_every: int | None = None
    name: ClassVar[str] = "gmp"
    patterns: ClassVar[frozenset[type]] = frozenset(
        {Unstructured}
    )  # its ramp is a sparsity ramp, which N:M has not

    def __post_init__(self) -> None:
        for field_name in ("refreshes", "refresh_every"):
            value = getattr(self, field_name)
            if field_name == "refresh_every" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                unit = "refreshes over the ramp" if field_name == "refreshes" else "steps"
                raise ValueError(f"{field_name} must be a positive int ({unit}), got {value!r}")

    def new_state(self, target: Any) -> MagnitudeState:
        return MagnitudeState()

    def mask_weight(self, weight: torch.Tensor, target: WeightTarget, state: MagnitudeState) -> torch.Tensor:
        mask = _stored_mask(state)
        return weight if mask is None else weight * mask.to(weight.dtype)

    def _interval(self, target: WeightTarget) -> int:
        """Which of the ramp's ``refreshes`` intervals the run is in now."""
        return min(self.refreshes, int(target.progress * self.refreshes))

    def _due(self, target: WeightTarget, state: MagnitudeState) -> bool:
        if state.mask is None:
            return True
        if state.sparsity == target.sparsity:
            return False
        if target.progress >= 1.0:
            return True
        if self.refresh_every is not None:
            return target.steps_pruning % self.refresh_every == 0
        return self._interval(target) > state.refreshed

    def after_step(self, target: WeightTarget, state: MagnitudeState) -> None:
        if target.sparsity == 0.0:
            return
        weight = target.parameter
        if self._due(target, state):
            state.mask = target.hard_mask(weight, target.sparsity)  # checks for NaN itself
            state.sparsity = target.sparsity
            state.refreshed = self._interval(target)
        elif not bool(torch.isfinite(weight.abs().max())):
            check_finite(weight, target.name)
        assert state.mask is not None
        weight.masked_fill_(~state.mask, 0)

    def final_weight_mask(
        self, weight: torch.Tensor, target: WeightTarget, state: MagnitudeState, sparsity: float
    ) -> torch.Tensor:
        if state.mask is not None and state.sparsity == sparsity:
            check_finite(weight, target.name)
            return state.mask
        return target.hard_mask(weight, sparsity)

    def state_dict(self, state: MagnitudeState) -> dict[str, Any]:
        if state.mask is None:
            return {}
        return {"mask": pack_mask(state.mask), "sparsity": state.sparsity, "refreshed": state.refreshed}

    def load_state_dict(self, target: Any, saved: dict[str, Any]) -> MagnitudeState:
        if "mask" not in saved:
            return MagnitudeState()
        mask = unpack_mask(saved["mask"], target.parameter.device, target.name)
        if tuple(mask.shape) != tuple(target.parameter.shape):
            raise ValueError(
                f"the checkpoint's mask for {target.name} has shape {tuple(mask.shape)}, "
                f"the weight {tuple(target.parameter.shape)}"
            )
        try:
            refreshed = int(saved.get("refreshed", -1))
        except (TypeError, ValueError):
            raise ValueError(f"the checkpoint's GMP state for {target.name} is malformed") from None
        return MagnitudeState(mask, float(saved["sparsity"]), refreshed)


@dataclass(frozen=True)
class OneShot(GMP):
    """One-shot magnitude pruning: the whole budget is cut when warm-up ends (the dense model's
    magnitudes), then the network fine-tunes with that mask fixed. The schedule's ramp is ignored.
    With an N:M pattern it keeps the N largest of every group of M."""

    name: ClassVar[str] = "oneshot"
    patterns: ClassVar[frozenset[type]] = frozenset({Unstructured, NM})

    def progress(self, schedule: Schedule, step: int) -> float:
        return 1.0 if schedule.pruning_started(step) else 0.0


@torch.compiler.disable
def _stored_mask(state: MagnitudeState) -> torch.Tensor | None:
    # Read outside torch.compile graphs: the mask is replaced at every refresh.
    return state.mask

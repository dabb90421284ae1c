"""SR-STE (Zhou et al., 2021): N:M training with a straight-through estimator and sparse-refined
decay, the usual baseline for learned N:M masks.

Forward uses the N:M magnitude mask of the current dense weights, recomputed at every step.
Backward passes the gradient straight through to all dense weights and adds ``decay * w`` for the
pruned ones, which pulls them towards zero so the mask settles instead of flipping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pdprune.methods.base import Method
from pdprune.patterns.specs import NM

if TYPE_CHECKING:
    from pdprune.patterns.weights import WeightTarget
    from pdprune.schedule import Schedule

__all__ = ["SRSTE"]


class _SparseRefinedSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, keep: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.save_for_backward(weight, keep)
        ctx.decay = decay
        return weight * keep.to(weight.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        weight, keep = ctx.saved_tensors
        return grad + ctx.decay * weight * (~keep).to(weight.dtype), None, None


@dataclass(frozen=True)
class SRSTE(Method):
    """Sparse-refined straight-through N:M training. The N:M mask applies from the end of warm-up
    (the schedule's ramp is ignored, as in the paper); ``decay`` is lambda_W (paper: 2e-4).

    As in the paper the decay is part of the gradient, added in backward. So it is scaled like a
    gradient term that the loss does not see: a GradScaler's loss scale S makes it decay / S after
    unscaling, and k accumulated micro-batches add it k times. Under those, pass decay * S or
    decay / k to keep lambda_W per optimizer step.
    """

    decay: float = 2e-4
    name: ClassVar[str] = "srste"
    patterns: ClassVar[frozenset[type]] = frozenset({NM})

    def __post_init__(self) -> None:
        if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) or not self.decay >= 0:
            raise ValueError(f"decay must be a number >= 0, got {self.decay!r}")

    def progress(self, schedule: Schedule, step: int) -> float:
        return 1.0 if schedule.pruning_started(step) else 0.0

    def new_state(self, target: Any) -> dict[str, Any]:
        return {}

    def mask_weight(self, weight: torch.Tensor, target: WeightTarget, state: dict[str, Any]) -> torch.Tensor:
        return _SparseRefinedSTE.apply(
            weight, _current_mask(weight.detach(), target, state), float(self.decay)
        )


@torch.compiler.disable
def _current_mask(weight: torch.Tensor, target: WeightTarget, state: dict[str, Any]) -> torch.Tensor:
    """The N:M mask of the weights as they are now, computed once per step and weight version."""
    key = (id(weight), weight._version, target.epoch)
    if state.get("key") != key:
        state["key"], state["mask"] = key, target.hard_mask(weight, target.sparsity)
    return state["mask"]

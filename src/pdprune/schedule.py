"""When pruning happens: dense warm-up, a ramp of sparsity from 0 to each layer's budget, then
fine-tuning at the budget until the end of training, where the masks are hardened.

Lengths are in optimizer steps: an ``int`` is a number of steps, a ``float`` in [0, 1] a fraction
of ``total_steps``. The paper ramps linearly; GMP (Zhu & Gupta, 2017) ramps cubically, removing
most weights early while the network can still recover.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

__all__ = ["CHANNEL_RAMP", "Schedule", "settle_fraction"]

RampShape = Literal["linear", "cubic"]

# The ramp to give channel pruning (a fraction of the steps): removing whole channels changes the
# architecture, and the network needs steps on its final shape. Chosen on the accuracy benchmark
# against 0.1 and 0.5 (docs/benchmarks.md).
CHANNEL_RAMP = 0.2


def _as_steps(value: int | float, total_steps: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be an int (steps) or a float in [0, 1] (fraction), got {value!r}")
    if not isinstance(value, numbers.Integral):
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"{what}={value!r}: a float is a fraction of total_steps and must be in [0, 1]; "
                f"give an int for a number of steps."
            )
        return round(value * total_steps)
    if value < 0:
        raise ValueError(f"{what} must be >= 0 steps, got {value}")
    return int(value)


@dataclass(frozen=True)
class Schedule:
    """Warm-up and ramp lengths of a pruning run.

    Args:
        total_steps: optimizer steps in the whole training run.
        warmup: dense steps before pruning starts (int) or fraction of ``total_steps`` (float).
        ramp: steps over which sparsity grows from 0 to the budget (int) or a fraction (float).
        shape: "linear" (as in PDP) or "cubic" (as in GMP).
    """

    total_steps: int
    warmup: int | float = 0.1
    ramp: int | float = 0.6
    shape: RampShape = "linear"

    def __post_init__(self) -> None:
        if (
            isinstance(self.total_steps, bool)
            or not isinstance(self.total_steps, numbers.Integral)
            or self.total_steps < 1
        ):
            raise ValueError(
                f"total_steps must be a positive int (optimizer steps), got {self.total_steps!r}"
            )
        object.__setattr__(self, "total_steps", int(self.total_steps))
        for what in ("warmup", "ramp"):
            value = getattr(self, what)
            _as_steps(value, self.total_steps, what)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, what, int(value))
            elif isinstance(value, numbers.Real):
                object.__setattr__(self, what, float(value))
        if self.shape not in ("linear", "cubic"):
            raise ValueError(f"shape must be 'linear' or 'cubic', got {self.shape!r}")
        if self.warmup_steps + self.ramp_steps > self.total_steps:
            raise ValueError(
                f"warm-up ({self.warmup_steps} steps) plus ramp ({self.ramp_steps} steps) exceed "
                f"total_steps={self.total_steps}; shorten them or train for longer."
            )

    @property
    def warmup_steps(self) -> int:
        return _as_steps(self.warmup, self.total_steps, "warmup")

    @property
    def ramp_steps(self) -> int:
        return _as_steps(self.ramp, self.total_steps, "ramp")

    def progress(self, step: int) -> float:
        """Fraction of the final sparsity in force after ``step`` optimizer steps (0 to 1)."""
        start = self.warmup_steps
        if step < start:
            return 0.0
        if self.ramp_steps == 0:
            return 1.0
        p = min(1.0, (step - start + 1) / self.ramp_steps)
        if self.shape == "cubic":
            return 1.0 - (1.0 - p) ** 3
        return p

    def pruning_started(self, step: int) -> bool:
        """Whether pruning is under way at ``step`` (warm-up is over)."""
        return step >= self.warmup_steps


def settle_fraction(step: int, ramp_end: int, total: int, settle: float = 0.5) -> float:
    """How far the masks have hardened after the ramp: 0 until the ramp ends, then rising linearly
    to 1 after ``settle`` of the remaining steps (the rest trains with exact 0/1 channel masks).

    A channel's output after a BatchNorm does not depend on its weights' scale, so with adaptive
    optimizers the channel norms drift together and sit near the cut, where the soft mask is
    neither 0 nor 1; a network that has learnt to use half-masked channels loses them all at
    hardening. Shrinking the temperature to zero before the end makes hardening a no-op.
    """
    if step <= ramp_end or total <= ramp_end:
        return 0.0 if step <= ramp_end else 1.0
    return min(1.0, (step - ramp_end) / max(1, int((total - ramp_end) * settle)))

"""L1-norm channel pruning (Li et al., 2017): the classic channel baseline.

When warm-up ends, each coupled group keeps the channels with the largest L1 norm (summed over the
group's layers), and the network fine-tunes with that choice fixed. Same groups, budgets, schedule
and removal as PDP's channel pruning; only the rule that picks channels differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pdprune.method import MaskMethod

if TYPE_CHECKING:
    from pdprune.schedule import Schedule

__all__ = ["L1Channel"]


@dataclass(frozen=True)
class L1Channel(MaskMethod):
    """One-shot L1-norm channel selection at the end of warm-up, then fixed."""

    name: ClassVar[str] = "l1channel"
    supports_unstructured: ClassVar[bool] = False
    supports_channels: ClassVar[bool] = True

    def progress(self, schedule: "Schedule", step: int) -> float:
        return 1.0 if schedule.pruning_started(step) else 0.0

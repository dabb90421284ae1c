"""L1-norm channel pruning (Li et al., 2017): the classic channel baseline.

When warm-up ends, each coupled group keeps the channels with the largest L1 norm (summed over the
group's layers), and the network fine-tunes with that choice fixed. Same groups, budgets, schedule
and removal as PDP's channel pruning; only the rule that picks channels differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pdprune.functional import channel_keep
from pdprune.methods.base import Method, pack_mask, unpack_mask
from pdprune.patterns.specs import Channels

if TYPE_CHECKING:
    from pdprune.patterns.channels import ChannelTarget
    from pdprune.schedule import Schedule

__all__ = ["L1Channel", "L1ChannelState"]


@dataclass
class L1ChannelState:
    """The units chosen when pruning started (None until then)."""

    fixed: torch.Tensor | None = None


@dataclass(frozen=True)
class L1Channel(Method):
    """One-shot L1-norm channel selection at the end of warm-up, then fixed."""

    name: ClassVar[str] = "l1channel"
    patterns: ClassVar[frozenset[type]] = frozenset({Channels})

    def new_state(self, target: Any) -> L1ChannelState:
        return L1ChannelState()

    def progress(self, schedule: Schedule, step: int) -> float:
        return 1.0 if schedule.pruning_started(step) else 0.0

    def after_step(self, target: ChannelTarget, state: L1ChannelState) -> None:
        target.check_finite("l1")
        if state.fixed is None and target.progress > 0.0:
            state.fixed = self._top(target)

    def mask_channels(self, target: ChannelTarget, state: L1ChannelState) -> torch.Tensor:
        return self.final_channels(target, state).float()

    def final_channels(self, target: ChannelTarget, state: L1ChannelState) -> torch.Tensor:
        """The fixed choice; before pruning starts, a preview of it that fixes nothing."""
        target.check_finite("l1")
        return state.fixed if state.fixed is not None else self._top(target)

    @staticmethod
    def _top(target: ChannelTarget) -> torch.Tensor:
        return channel_keep(target.scores(norm="l1"), target.keep)

    def state_dict(self, state: L1ChannelState) -> dict[str, Any]:
        return {} if state.fixed is None else {"fixed": pack_mask(state.fixed)}

    def load_state_dict(self, target: ChannelTarget, saved: dict[str, Any]) -> L1ChannelState:
        if "fixed" not in saved:
            return L1ChannelState()
        fixed = unpack_mask(saved["fixed"], target.device, target.name)
        if fixed.numel() != target.units or int(fixed.sum()) != target.keep:
            raise ValueError(
                f"the checkpoint's channel choice for {target.name} does not fit this model's group"
            )
        return L1ChannelState(fixed)

"""The method protocol: how a masking rule scores, masks in training and hardens its targets.

A method is a frozen dataclass of settings; everything it learns or caches per target lives in
the state object it creates for that target (like ``torch.optim``'s ``state[param]``), which the
pruner keeps, checkpoints and hands back on every call. A new method is one class in one file.
Weight targets (unstructured, N:M) and channel targets each have their two calls; a method
implements those of the patterns it lists in ``patterns``.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from pdprune.patterns.specs import Pattern, Unstructured

if TYPE_CHECKING:
    from pdprune.patterns.channels import ChannelTarget
    from pdprune.patterns.weights import WeightTarget
    from pdprune.schedule import Schedule

__all__ = ["Method", "pack_mask", "unpack_mask"]


class Method:
    """Base class of masking rules (PDP and the baselines)."""

    name: ClassVar[str] = "base"
    #: The pattern types (pdprune.Unstructured, pdprune.NM, pdprune.Channels) this rule can prune.
    patterns: ClassVar[frozenset[type]] = frozenset({Unstructured})

    def supports(self, pattern: Pattern) -> bool:
        return type(pattern) in self.patterns

    def check(self, pattern: Pattern) -> None:
        """Raise ValueError naming a setting of this method that does not apply to ``pattern``."""

    def new_state(self, target: Any) -> Any:
        """The per-target state this method keeps (None when it keeps none)."""
        return None

    def progress(self, schedule: Schedule, step: int) -> float:
        """Fraction of each target's budget in force after ``step`` steps."""
        return schedule.progress(step)

    def after_step(self, target: Any, state: Any) -> None:
        """Called under no_grad after every optimizer step (and once at prepare and resume)."""

    # ----------------------------------------------------------- weight targets
    def mask_weight(self, weight: torch.Tensor, target: WeightTarget, state: Any) -> torch.Tensor:
        """The tensor the layer computes with in place of ``weight`` (differentiable)."""
        raise NotImplementedError(f"{type(self).__name__} does not prune weights")

    def gain_at_cut(self, target: WeightTarget, state: Any) -> float | None:
        """How much the mask amplifies the gradient of a weight at the cut in the last step in
        force, for the report; None for rules without a soft mask."""
        return None

    def final_weight_mask(
        self, weight: torch.Tensor, target: WeightTarget, state: Any, sparsity: float
    ) -> torch.Tensor:
        """The boolean keep-mask hardening applies at ``sparsity`` (the target's pattern's)."""
        return target.hard_mask(weight, sparsity)

    # ----------------------------------------------------------- channel targets
    def mask_channels(self, target: ChannelTarget, state: Any) -> torch.Tensor:
        """The per-unit float mask the group's producers compute with (differentiable)."""
        raise NotImplementedError(f"{type(self).__name__} does not prune channels")

    def final_channels(self, target: ChannelTarget, state: Any) -> torch.Tensor:
        """The boolean per-unit choice hardening keeps (exactly ``target.keep`` units)."""
        raise NotImplementedError(f"{type(self).__name__} does not prune channels")

    # ----------------------------------------------------------- checkpoints
    def state_dict(self, state: Any) -> dict[str, Any]:
        """The part of ``state`` a resumed run needs, as JSON-ready values."""
        return {}

    def load_state_dict(self, target: Any, saved: dict[str, Any]) -> Any:
        """A state rebuilt from :meth:`state_dict`'s output, on the target's device."""
        return self.new_state(target)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that must match when a checkpoint is resumed."""
        return {"name": self.name, **(asdict(self) if hasattr(self, "__dataclass_fields__") else {})}  # type: ignore[call-overload]


def pack_mask(mask: torch.Tensor) -> dict[str, Any]:
    """A boolean tensor as JSON: its shape and its bits packed and base64-encoded."""
    bits = np.packbits(mask.detach().to("cpu", torch.bool).reshape(-1).numpy())
    return {"shape": list(mask.shape), "bits": base64.b64encode(bits.tobytes()).decode("ascii")}


def unpack_mask(packed: Any, device: torch.device, what: str) -> torch.Tensor:
    """The boolean tensor :func:`pack_mask` encoded; ValueError naming ``what`` if it is malformed."""
    try:
        shape = [int(s) for s in packed["shape"]]
        raw = np.frombuffer(base64.b64decode(packed["bits"], validate=True), dtype=np.uint8)
        numel = int(np.prod(shape)) if shape else 1
        if raw.size != (numel + 7) // 8:
            raise ValueError("bit count does not match the shape")
        flat = np.unpackbits(raw, count=numel).astype(bool)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"the checkpoint's mask for {what} is malformed ({error})") from None
    return torch.from_numpy(flat.copy()).view(shape).to(device)

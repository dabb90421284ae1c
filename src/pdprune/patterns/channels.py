"""Channel targets: one coupled channel group with one shared mask per unit, and the forward hooks
that apply it to each producer's output channels (weight rows, bias and norm affine parameters),
swapping those parameters for masked ones during the module's forward as weight masks do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pdprune.channel.groups import ChannelGroup, ChannelMember
from pdprune.functional import channel_scores, check_finite
from pdprune.patterns.hooks import ParameterSwapHook
from pdprune.patterns.weights import replaced

__all__ = ["ChannelHook", "ChannelTarget"]


@dataclass
class ChannelTarget:
    """A channel group under pruning and the schedule's view of it: ``keep`` units at the end,
    the ramp's progress, and how far the soft mask has hardened after the ramp."""

    group: ChannelGroup
    keep: int
    tau: float
    progress: float = 0.0  # fraction of the ramp done; 0 means no mask at all
    temperature_scale: float = 1.0  # shrinks to 0 after the ramp: exact 0/1 masks before hardening
    epoch: int = 0  # bumped every optimizer step
    calls: int = 0  # training forwards of the group's producers

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def units(self) -> int:
        return self.group.channels

    @property
    def device(self) -> torch.device:
        return self.group.scored_weights()[0][0].device

    def keep_now(self) -> int:
        """Units kept at the ramp's progress: the cut moves one unit at a time, as the weight
        ramp moves the sparsity, so at progress p, p of the units to remove are below it."""
        return self.units - round(self.progress * (self.units - self.keep))

    def score_weights(self, norm: str = "l2") -> list[tuple[torch.Tensor, int]]:
        """(weight, channel dim) of what the score reads: the parameters that set the channels'
        scale for ``"l2"`` (PDP), the Linear/conv weights for ``"l1"`` (the classic baseline)."""
        return self.group.scale_weights() if norm == "l2" else self.group.scored_weights()

    def check_finite(self, norm: str = "l2") -> None:
        """Raise a clear error if a weight the score reads holds NaN or inf."""
        for weight, _ in self.score_weights(norm):
            if not bool(torch.isfinite(weight.detach().abs().max())):  # NaN or inf iff some element is
                check_finite(weight, f"a weight of channel group {self.name}")

    def scores(self, norm: str = "l2", detach: bool = True) -> torch.Tensor:
        """Per unit: the squared L2 norm of the parameters that set the channels' scale
        (``"l2"``, PDP's score), or the L1 norm of the Linear/conv weights (``"l1"``)."""
        return self.group.per_unit(channel_scores(self.score_weights(norm), norm=norm, detach=detach))

    def swapped_out(self, model: nn.Module) -> str | None:
        """Why this group no longer belongs to ``model`` (a layer replaced after prepare), or None."""
        for member in self.group.members:
            why = replaced(model, member.name, member.module)
            if why is not None:
                return why
        return None


class ChannelHook(ParameterSwapHook):
    """Runs one producer module with its channels masked (weight rows, bias, norm affine).
    ``mask() -> per-unit float tensor`` is the method's mask in training for the group."""

    def __init__(
        self, target: ChannelTarget, member: ChannelMember, mask: Callable[[], torch.Tensor]
    ) -> None:
        super().__init__()
        self.target = target
        self.member = member
        self.mask = mask
        self.calls = 0  # training forwards of this producer

    def masked_parameters(self, module: nn.Module) -> dict[str, torch.Tensor] | None:
        if not self._enter(module.training or torch.is_grad_enabled()):
            return None
        m = self.target.group.lay_out(self.member, self.mask())
        swapped = {}
        for name, dim in self.member.channel_params():
            parameter = module._parameters[name]
            assert parameter is not None
            shape = [1] * parameter.dim()
            shape[dim] = -1
            swapped[name] = parameter * m.view(shape).to(parameter.dtype)
        return swapped

    @torch.compiler.disable
    def _enter(self, training: bool) -> bool:
        """Count a call that can train (training mode, or autograd on: a model that
        from_pretrained left in eval mode still trains); True when a mask is in force."""
        if training:
            self.calls += 1
            self.target.calls += 1
        return self.target.progress != 0.0

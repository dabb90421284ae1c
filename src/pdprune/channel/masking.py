"""Channel masks in forward: one soft mask per coupled group, applied to each producer's output
channels (weight rows, bias and norm affine parameters) by swapping those parameters for masked
ones during the module's forward, as the weight masks do."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pdprune.channel.groups import ChannelGroup, ChannelMember
from pdprune.functional import channel_cut, channel_keep, channel_scores, channel_soft_mask, check_finite

__all__ = ["ChannelHook", "ChannelMaskState"]


class ChannelMaskState:
    """The shared mask of one channel group, recomputed from the current weights each step."""

    def __init__(self, group: ChannelGroup, keep: int, tau: float, one_shot_l1: bool = False) -> None:
        self.group = group
        self.keep = keep
        self.tau = tau
        self.one_shot_l1 = one_shot_l1  # the L1-norm baseline: a hard mask picked once, then fixed
        self.fixed: torch.Tensor | None = None
        self.progress = 0.0  # fraction of the ramp done; 0 means no mask at all
        self.temperature_scale = 1.0  # shrinks to 0 after the ramp: exact 0/1 masks before hardening
        self.epoch = 0  # bumped every optimizer step
        self.calls = 0  # training forwards of the group's producers, to catch graphs that bypass the hooks
        self._cached: tuple[tuple[Any, ...], torch.Tensor] | None = None

    def scores(self) -> torch.Tensor:
        weights = self.group.scale_weights()
        for weight, _ in weights:
            if not bool(torch.isfinite(weight.detach().abs().max())):  # max is NaN or inf iff some element is
                check_finite(weight, f"a weight of channel group {self.group.name}")
        return self.group.per_unit(channel_scores(weights))

    def hard_keep(self) -> torch.Tensor:
        """The channels hardening keeps: the fixed L1 choice, or PDP's highest scores now."""
        if self.one_shot_l1:
            if self.fixed is not None:
                return self.fixed
            keep = channel_keep(self.group.per_unit(channel_scores(self.group.scored_weights(), norm="l1")), self.keep)
            if self.progress > 0.0:  # chosen once pruning starts; a look during warm-up fixes nothing
                self.fixed = keep
            return keep
        return channel_keep(self.scores(), self.keep)

    def mask(self) -> torch.Tensor:
        """The soft mask (float32, one value per channel) for the weights as they are now,
        differentiable in them (the cut t^2 is a detached statistic, reused within a step)."""
        if self.one_shot_l1:
            return self.hard_keep().float()
        # The ramp moves the cut one channel at a time, as the unstructured ramp moves the
        # sparsity: at progress p, p of the channels to remove are below it.
        channels = self.group.channels
        keep_now = channels - round(self.progress * (channels - self.keep))
        if keep_now == channels:
            return torch.ones(channels, device=self.group.scored_weights()[0][0].device)
        if self.temperature_scale <= 0.0:
            return channel_keep(self.scores(), keep_now).float()
        live = self.group.per_unit(channel_scores(self.group.scale_weights(), detach=False))
        key = (self.epoch, keep_now, *((id(w), w._version) for w, _ in self.group.scale_weights()))
        if self._cached is None or self._cached[0] != key:
            self.scores()  # NaN check
            self._cached = (key, channel_cut(live, keep_now))
        return channel_soft_mask(live, keep_now, self.tau * self.temperature_scale, cut=self._cached[1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cached"] = None
        return state


class ChannelHook:
    """Pre/post forward hooks that run one producer module with its channels masked."""

    def __init__(self, state: ChannelMaskState, member: ChannelMember) -> None:
        self.state = state
        self.member = member
        self.calls = 0  # training forwards of this producer
        self._stash: list[list[tuple[str, nn.Parameter]]] = []

    def before(self, module: nn.Module, args: Any) -> None:
        if not self._enter(module.training):
            return
        m = self.state.group.expand(self.state.mask())
        saved = []
        for name, dim in self.member.channel_params():
            parameter = module._parameters[name]
            assert parameter is not None
            shape = [1] * parameter.dim()
            shape[dim] = -1
            saved.append((name, parameter))
            module._parameters[name] = (parameter * self.member.stacked(m).view(shape).to(parameter.dtype))  # type: ignore[assignment]
        self._stash.append(saved)

    @torch.compiler.disable
    def _enter(self, training: bool) -> bool:
        """Count a training call; True when a mask is in force."""
        if training:
            self.calls += 1
            self.state.calls += 1
        return self.state.progress != 0.0

    def after(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stash:
            for name, parameter in self._stash.pop():
                module._parameters[name] = parameter

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stash"] = []
        return state

    def attach(self, module: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        return [
            module.register_forward_pre_hook(self.before),
            module.register_forward_hook(self.after, always_call=True),
        ]

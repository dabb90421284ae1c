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
from pdprune.functional.masks import nonfinite_error
from pdprune.patterns.hooks import ParameterSwapHook
from pdprune.patterns.weights import replaced
from pdprune.sharding import is_sharded, local_part, row_range, shards_of

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
        return self.group.score_parts("l1")[0][0].device

    def keep_now(self) -> int:
        """Units kept at the ramp's progress: the cut moves one unit at a time, as the weight
        ramp moves the sparsity, so at progress p, p of the units to remove are below it."""
        return self.units - round(self.progress * (self.units - self.keep))

    def score_weights(self, norm: str = "l2") -> list[tuple[torch.Tensor, int]]:
        """(weight, channel dim) of what the score reads: the parameters that set the channels'
        scale for ``"l2"`` (PDP), the Linear/conv weights for ``"l1"`` (the classic baseline)."""
        return self.group.scale_weights() if norm == "l2" else self.group.scored_weights()

    def sharded(self, norm: str = "l2") -> list[str]:
        """Names of the group's members whose scored parameters FSDP2 holds sharded now."""
        parameters = {id(weight) for weight, *_ in self.group.score_parts(norm)}
        return [
            m.name
            for m in self.group.members
            if any(
                id(p) in parameters and is_sharded(p)
                for p in (getattr(m.module, n, None) for n, _ in m.channel_params())
                if p is not None
            )
        ]

    def check_finite(self, norm: str = "l2") -> None:
        """Raise a clear error if a weight the score reads holds NaN or inf (of sharded weights,
        :meth:`scores` checks, as part of its all-reduce)."""
        if self.sharded(norm):
            return
        for weight, _ in self.score_weights(norm):
            if not bool(torch.isfinite(weight.detach().abs().max())):  # NaN or inf iff some element is
                check_finite(weight, f"a weight of channel group {self.name}")

    def scores(self, norm: str = "l2", detach: bool = True) -> torch.Tensor:
        """Per unit: the squared L2 norm of the parameters that set the channels' scale
        (``"l2"``, PDP's score), or the L1 norm of the Linear/conv weights (``"l1"``)."""
        if self.sharded(norm):
            if not detach:
                raise ValueError(self.split_across_units_error(norm))
            return self.group.per_unit(self._sharded_scores(norm))
        return self.group.per_unit(channel_scores(self.score_weights(norm), norm=norm, detach=detach))

    def _sharded_scores(self, norm: str) -> torch.Tensor:
        """:meth:`scores` per channel when FSDP2 shards the weights by rows (collective): each
        rank sums its own rows (exact along a row's channel axis, partial along the others),
        and one all-reduce of those sums, with a count of NaN and inf, gives every rank the
        whole group's scores. No rank gathers a weight."""
        parts = self.group.score_parts(norm)
        shards = [shards_of(w, f"a weight of channel group {self.name}") for w, *_ in parts if is_sharded(w)]
        if any(s.group is not shards[0].group for s in shards):
            raise ValueError(
                f"the layers of channel group {self.name} are sharded over different ranks; shard "
                "them over one device mesh, or leave the group out with exclude=[...]"
            )
        index, count = shards[0].index, shards[0].count
        pieces, bad = [], 0
        for weight, dim, _, _ in parts:
            local = local_part(weight.detach())
            sums = channel_scores([(local, dim)], norm=norm)
            if is_sharded(weight) and dim == 0:  # this rank's rows, in place among all rows
                start, stop = row_range(weight.shape[0], index, count)
                sums = nn.functional.pad(sums, (start, weight.shape[0] - stop))
            elif not is_sharded(weight) and index != 0:  # held whole by every rank: counted once
                sums = torch.zeros_like(sums)
            if is_sharded(weight) or index == 0:
                bad += int((~torch.isfinite(local)).sum())
            pieces.append(sums)
        whole = shards[0].reduce(
            torch.cat([*pieces, torch.tensor([float(bad)], device=pieces[0].device)]), "sum"
        )
        if whole[-1].item():
            raise nonfinite_error(f"a weight of channel group {self.name}", int(whole[-1].item()))
        total = None
        for (_, _, copies, runs), sums in zip(parts, whole[:-1].split([p.numel() for p in pieces])):
            per_channel = self.group.fold_channels(sums, copies, runs)
            total = per_channel if total is None else total + per_channel
        assert total is not None
        return total

    def split_across_units_error(self, norm: str = "l2") -> str:
        """Why the soft mask cannot be computed in a forward where FSDP2 holds some of the group's
        weights sharded (they belong to another ``fully_shard`` unit)."""
        sharded = self.sharded(norm)
        return (
            f"channel group {self.name} spans layers that are in different fully_shard units: its mask "
            f"reads the weights of {', '.join(m.name for m in self.group.members)} in each of their "
            f"forwards, but FSDP2 holds {', '.join(sharded)} sharded there. Apply fully_shard to a "
            "module that holds every layer of the group (a whole block, or the model), or leave the "
            "group out with exclude=[...]"
        )

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

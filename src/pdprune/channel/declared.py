"""Channel groups that tracing cannot remove faithfully: attention heads, and groups users declare.

A reshape into heads ties q, k and v rows in runs of ``head_dim``; removing single channels
breaks the reshape, removing whole heads does not. These groups are built from a
:class:`~pdprune.ChannelGroupSpec` (declared, or found in a Hugging Face model's layout by
:mod:`pdprune.channel.transformer_layouts`), masked per unit, and removed layer by layer:
producers lose output channels, consumers input channels, then the modules' size attributes
are updated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pdprune.channel.groups import (
    CONV_TYPES,
    NORM_TYPES,
    ChannelGroup,
    ChannelMember,
    Removal,
    member_for,
    remove_layer_channels,
    set_size_attributes,
)
from pdprune.patterns.specs import ChannelGroupSpec, is_transformers_conv1d

__all__ = ["DeclaredGroup", "HeadGroup", "LayoutGroup", "build_declared"]


@dataclass
class DeclaredGroup(ChannelGroup):
    """A group declared with a :class:`~pdprune.ChannelGroupSpec`: removed layer by layer
    (producers lose output channels, consumers input channels), then its size attributes set."""

    def remove(
        self, units: list[int], modules: dict[str, nn.Module], graph: Any
    ) -> tuple[list[Removal], dict[str, int]]:
        if not units:
            return [], {}
        ordered = sorted(units)

        def runs(run: int, copies: int = 1) -> list[int]:
            span = self.channels * run
            return [c * span + u * run + i for c in range(copies) for u in ordered for i in range(run)]

        removals: list[Removal] = [[m.name, True, runs(self.width * m.repeat, m.fold)] for m in self.members]
        removals += [[name, False, runs(per_unit)] for name, per_unit in self.consumers.items()]
        kept = self.channels - len(units)
        attributes = {
            path: kept if what == "units" else kept * self.width for path, what in self.counts.items()
        }
        remove_layer_channels(modules, removals)
        set_size_attributes(modules, attributes)
        return removals, attributes


@dataclass
class LayoutGroup(DeclaredGroup):
    """Channels pdprune found in a known model layout that tracing cannot follow (GPT-2's MLP rows,
    held in transformers' ``Conv1D``): removed as a declared group is, but skipped with the
    reason, not refused, when it cannot be pruned."""


@dataclass
class HeadGroup(LayoutGroup):
    """The attention heads of one Hugging Face self-attention module, found by pdprune."""

    unit_name: ClassVar[str] = "heads"


def _channels(module: nn.Module, output_side: bool) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features if output_side else module.in_features
    if is_transformers_conv1d(module):
        return int(module.weight.shape[1 if output_side else 0])
    if isinstance(module, CONV_TYPES):
        return module.out_channels if output_side else module.in_channels
    if isinstance(module, NORM_TYPES):
        for tensor in (getattr(module, "weight", None), getattr(module, "running_mean", None)):
            if isinstance(tensor, torch.Tensor):
                return int(tensor.shape[0])
        return int(module.num_features)
    return None


def build_declared(
    model: nn.Module,
    spec: ChannelGroupSpec,
    kind: type[DeclaredGroup],
    outputs: set[nn.Module],
    keep_module: Callable[[nn.Module, str], bool],
    exclude: Sequence[str],
) -> ChannelGroup | str:
    """The group a spec describes, or why it cannot be pruned (names the module and the fix)."""
    modules = dict(model.named_modules())
    missing = [n for n in (*spec.producers, *spec.consumers) if n not in modules]
    if missing:
        return (
            f"no module named {', '.join(missing)} in {type(model).__name__} (names as model.named_modules() "
            "gives them)"
        )
    members: list[ChannelMember] = []
    sizes: dict[str, int | None] = {}
    for name in spec.producers:
        module = modules[name]
        if isinstance(module, CONV_TYPES) and module.groups != 1:
            return f"{name}: grouped or depthwise convolutions cannot be declared producers"
        member = member_for(name, module)
        if isinstance(member, str):
            return member
        if not (isinstance(module, (nn.Linear, *CONV_TYPES, *NORM_TYPES)) or is_transformers_conv1d(module)):
            return (
                f"{name}: {type(module).__name__} layers cannot be declared producers (Linear, convolutions, "
                "norms)"
            )
        member.fold, member.repeat = spec.layout(name)
        if module in outputs:
            return f"{name} produces a model output"
        if member.scored and not keep_module(module, name):
            return f"{name} is not selected by the filter"
        if any(re.search(p, name) for p in exclude):
            return f"{name} is excluded"
        members.append(member)
        sizes[name] = _channels(module, True)
    for name in spec.consumers:
        module = modules[name]
        if not (isinstance(module, (nn.Linear, *CONV_TYPES)) or is_transformers_conv1d(module)) or (
            isinstance(module, CONV_TYPES) and module.groups != 1
        ):
            return f"{name}: only Linear layers and ungrouped convolutions can be declared consumers"
        sizes[name] = _channels(module, False)
    per_copy = {}
    for name, size in sizes.items():
        copies = spec.layout(name)[0] * spec.layout(name)[1]
        per_copy[name] = None if size is None or size % copies else size // copies
    channels = set(per_copy.values())
    if len(channels) != 1 or None in channels:
        copies = {n: spec.layout(n)[0] * spec.layout(n)[1] for n in sizes}
        listed = ", ".join(
            f"{n}: {c}" + (f" in {copies[n]} copies" if copies[n] > 1 else "") for n, c in sizes.items()
        )
        return f"the declared layers disagree on the group's channel count ({listed})"
    total = channels.pop()
    assert total is not None
    units = spec.units or total
    if total % units:
        return f"{total} channels do not split into {units} equal units"
    if not any(m.scored for m in members):
        return "no Linear or convolution among the producers to score the channels by"
    for path in spec.counts:
        owner_name, _, attribute = path.rpartition(".")
        if not isinstance(getattr(modules.get(owner_name), attribute, None), int):
            return (
                f"counts names {path!r}, but {owner_name or 'the model'} has no int attribute {attribute!r}"
            )
    root = modules[spec.producers[0]]
    return kind(
        name=spec.name,
        channels=units,
        members=members,
        consumers={name: total // units * spec.layout(name)[1] for name in spec.consumers},
        root=root,
        root_fn=None,
        width=total // units,
        counts=dict(spec.counts),
    )

"""Channel groups that tracing cannot remove faithfully: attention heads, and groups users declare.

A reshape into heads ties q, k and v rows in runs of ``head_dim``; removing single channels
breaks the reshape, removing whole heads does not. These groups are built from a
:class:`~pdprune.ChannelGroupSpec` (declared, or found by :func:`attention_head_specs` for
Hugging Face BERT-family attention), masked per unit, and removed layer by layer: producers lose
output channels, consumers input channels, then the modules' size attributes are updated.
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
from pdprune.patterns.specs import ChannelGroupSpec

__all__ = ["DeclaredGroup", "HeadGroup", "attention_head_specs", "build_declared", "decoder_attention"]


@dataclass
class DeclaredGroup(ChannelGroup):
    """A group declared with a :class:`~pdprune.ChannelGroupSpec`: removed layer by layer
    (producers lose output channels, consumers input channels), then its size attributes set."""

    def remove(
        self, units: list[int], modules: dict[str, nn.Module], graph: Any
    ) -> tuple[list[Removal], dict[str, int]]:
        if not units:
            return [], {}
        indices = self.channel_indices(sorted(units))
        removals: list[Removal] = [[m.name, True, indices] for m in self.members]
        removals += [[name, False, indices] for name in self.consumers]
        kept = self.channels - len(units)
        attributes = {
            path: kept if what == "units" else kept * self.width for path, what in self.counts.items()
        }
        remove_layer_channels(modules, removals)
        set_size_attributes(modules, attributes)
        return removals, attributes


@dataclass
class HeadGroup(DeclaredGroup):
    """The attention heads of one Hugging Face BERT-style self-attention module, found by pdprune."""

    unit_name: ClassVar[str] = "heads"


def attention_head_specs(model: nn.Module) -> list[ChannelGroupSpec]:
    """One group per self-attention module laid out as Hugging Face's BERT family lays it out:
    a module with Linear ``query``, ``key``, ``value`` and ``num_attention_heads`` /
    ``attention_head_size``, whose parent's ``output.dense`` Linear takes the heads' outputs."""
    specs = []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        projections = [getattr(module, p, None) for p in ("query", "key", "value")]
        heads, size = (
            getattr(module, "num_attention_heads", None),
            getattr(module, "attention_head_size", None),
        )
        if (
            not all(isinstance(p, nn.Linear) for p in projections)
            or not isinstance(heads, int)
            or not isinstance(size, int)
        ):
            continue
        parent_name = name.rpartition(".")[0]
        output = getattr(modules.get(parent_name), "output", None)
        dense = getattr(output, "dense", None)
        channels = heads * size
        if not isinstance(dense, nn.Linear) or dense.in_features != channels:
            continue
        if any(p.out_features != channels for p in projections):  # type: ignore[union-attr]
            continue
        prefix = f"{name}." if name else ""
        counts = {f"{prefix}num_attention_heads": "units"}
        if isinstance(getattr(module, "all_head_size", None), int):
            counts[f"{prefix}all_head_size"] = "channels"
        output_name = f"{parent_name}.output.dense" if parent_name else "output.dense"
        specs.append(
            ChannelGroupSpec(
                name=name,
                producers=tuple(f"{prefix}{p}" for p in ("query", "key", "value")),
                consumers=(output_name,),
                units=heads,
                counts=counts,
            )
        )
    return specs


_DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def decoder_attention(model: nn.Module) -> tuple[list[ChannelGroupSpec], dict[str, str], list[nn.Module]]:
    """Attention laid out as Hugging Face's Llama family lays it out (Llama, Mistral, Qwen2: Linear
    ``q_proj``/``k_proj``/``v_proj``/``o_proj`` and ``head_dim``, the head count left to reshapes).

    Returns a head group per module whose keys and values have a head per query head, the
    reason each grouped-query attention module is left whole, and every such module's
    projections, which tracing must not follow: the dependency search through grouped-query
    attention's repeated keys and values does not finish.
    """
    specs: list[ChannelGroupSpec] = []
    reasons: dict[str, str] = {}
    projections: list[nn.Module] = []
    for name, module in model.named_modules():
        layers = [getattr(module, p, None) for p in _DECODER_PROJECTIONS]
        head_dim = getattr(module, "head_dim", None)
        if not all(isinstance(layer, nn.Linear) for layer in layers) or not isinstance(head_dim, int):
            continue
        q, k, v, o = layers
        projections += layers  # type: ignore[arg-type]
        if q.out_features % head_dim or k.out_features % head_dim or v.out_features != k.out_features:  # type: ignore[union-attr]
            reasons[f"{name}.heads"] = f"its projections are not whole heads of {head_dim} channels"
            continue
        heads, key_heads = q.out_features // head_dim, k.out_features // head_dim  # type: ignore[union-attr]
        if heads != key_heads:
            reasons[f"{name}.heads"] = (
                f"grouped-query attention ({heads} query heads share {key_heads} key/value heads): pdprune "
                "does not remove its heads yet; the MLPs next to it are pruned"
            )
            continue
        if o.in_features != q.out_features:  # type: ignore[union-attr]
            continue
        prefix = f"{name}." if name else ""
        specs.append(
            ChannelGroupSpec(
                name=f"{prefix}heads",
                producers=tuple(f"{prefix}{p}" for p in _DECODER_PROJECTIONS[:3]),
                consumers=(f"{prefix}o_proj",),
                units=heads,
            )
        )
    return specs, reasons, projections


def _channels(module: nn.Module, output_side: bool) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features if output_side else module.in_features
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
        if not isinstance(module, (nn.Linear, *CONV_TYPES, *NORM_TYPES)):
            return (
                f"{name}: {type(module).__name__} layers cannot be declared producers (Linear, convolutions, "
                "norms)"
            )
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
        if not isinstance(module, (nn.Linear, *CONV_TYPES)) or (
            isinstance(module, CONV_TYPES) and module.groups != 1
        ):
            return f"{name}: only Linear layers and ungrouped convolutions can be declared consumers"
        sizes[name] = _channels(module, False)
    channels = set(sizes.values())
    if len(channels) != 1 or None in channels:
        listed = ", ".join(f"{n}: {c}" for n, c in sizes.items())
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
        consumers=dict.fromkeys(spec.consumers, total // units),
        root=root,
        root_fn=None,
        width=total // units,
        counts=dict(spec.counts),
    )

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
from typing import Any

import torch
from torch import nn

from pdprune.channel.groups import _CONV, _NORMS, ChannelGroup, ChannelMember, _member
from pdprune.pattern import ChannelGroupSpec

__all__ = ["apply_removals", "attention_head_specs", "build_declared", "remove_units"]

Removal = list[Any]  # [module name, is output side, channel indices], as the traced graph records;
# [attention name, "heads", head indices] for the heads of an nn.MultiheadAttention


def attention_head_specs(model: nn.Module) -> list[ChannelGroupSpec]:
    """One group per self-attention module laid out as Hugging Face's BERT family lays it out:
    a module with Linear ``query``, ``key``, ``value`` and ``num_attention_heads`` /
    ``attention_head_size``, whose parent's ``output.dense`` Linear takes the heads' outputs."""
    specs = []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        projections = [getattr(module, p, None) for p in ("query", "key", "value")]
        heads, size = getattr(module, "num_attention_heads", None), getattr(module, "attention_head_size", None)
        if not all(isinstance(p, nn.Linear) for p in projections) or not isinstance(heads, int) or not isinstance(size, int):
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
        specs.append(ChannelGroupSpec(
            name=name, producers=tuple(f"{prefix}{p}" for p in ("query", "key", "value")),
            consumers=(output_name,), units=heads, counts=counts,
        ))
    return specs


def _channels(module: nn.Module, output_side: bool) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features if output_side else module.in_features
    if isinstance(module, _CONV):
        return module.out_channels if output_side else module.in_channels
    if isinstance(module, _NORMS):
        for tensor in (getattr(module, "weight", None), getattr(module, "running_mean", None)):
            if isinstance(tensor, torch.Tensor):
                return int(tensor.shape[0])
        return int(module.num_features)
    return None


def build_declared(
    model: nn.Module,
    spec: ChannelGroupSpec,
    origin: str,
    outputs: set[nn.Module],
    keep_module: Callable[[nn.Module, str], bool],
    exclude: Sequence[str],
) -> ChannelGroup | str:
    """The group a spec describes, or why it cannot be pruned (names the module and the fix)."""
    modules = dict(model.named_modules())
    missing = [n for n in (*spec.producers, *spec.consumers) if n not in modules]
    if missing:
        return f"no module named {', '.join(missing)} in {type(model).__name__} (names as model.named_modules() gives them)"
    members: list[ChannelMember] = []
    sizes: dict[str, int | None] = {}
    for name in spec.producers:
        module = modules[name]
        if isinstance(module, _CONV) and module.groups != 1:
            return f"{name}: grouped or depthwise convolutions cannot be declared producers"
        member = _member(name, module)
        if isinstance(member, str):
            return member
        if not isinstance(module, (nn.Linear, *_CONV, *_NORMS)):
            return f"{name}: {type(module).__name__} layers cannot be declared producers (Linear, convolutions, norms)"
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
        if not isinstance(module, (nn.Linear, *_CONV)) or (isinstance(module, _CONV) and module.groups != 1):
            return f"{name}: only Linear layers and ungrouped convolutions can be declared consumers"
        sizes[name] = _channels(module, False)
    channels = {size for size in sizes.values()}
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
            return f"counts names {path!r}, but {owner_name or 'the model'} has no int attribute {attribute!r}"
    root = modules[spec.producers[0]]
    return ChannelGroup(
        name=spec.name, channels=units, members=members, consumers={c: total // units for c in spec.consumers},
        root=root, root_fn=None, width=total // units, origin=origin, counts=dict(spec.counts),
    )


def remove_units(group: ChannelGroup, units: list[int], modules: dict[str, nn.Module]) -> tuple[list[Removal], dict[str, int]]:
    """Remove ``units`` of a declared group from the modules (a name -> module map of the model to
    change), update its size attributes and return (removals, {"module.attr": new value})."""
    if not units:
        return [], {}
    if group.origin == "mha-heads":
        from pdprune.channel.attention import remove_mha_heads

        remove_mha_heads(modules[group.name], sorted(units))  # type: ignore[arg-type]
        return [[group.name, "heads", sorted(units)]], {}
    indices = group.channel_indices(sorted(units))
    removals: list[Removal] = [[m.name, True, indices] for m in group.members]
    removals += [[name, False, indices] for name in group.consumers]
    kept_units = group.channels - len(units)
    attributes = {path: kept_units if what == "units" else kept_units * group.width for path, what in group.counts.items()}
    apply_removals(modules, removals, attributes)
    return removals, attributes


def apply_removals(modules: dict[str, nn.Module], removals: list[Removal], attributes: dict[str, int]) -> None:
    """Replay removals and attribute updates (as :func:`remove_units` returned them)."""
    import torch_pruning as tp

    from pdprune.channel.attention import remove_mha_heads

    pruners = tp.DependencyGraph()
    for name, output_side, indices in removals:
        module = modules.get(name)
        if output_side == "heads":  # whole heads of an nn.MultiheadAttention
            if not isinstance(module, nn.MultiheadAttention):
                raise ValueError(f"cannot remove attention heads of {name!r}: no nn.MultiheadAttention of that name")
            remove_mha_heads(module, list(indices))
            continue
        pruner = pruners.get_pruner_of_module(module) if module is not None else None
        if pruner is None:
            raise ValueError(f"cannot remove channels of {name!r}: no such Linear, convolution or norm in this model")
        (pruner.prune_out_channels if output_side else pruner.prune_in_channels)(module, list(indices))
    for path, value in attributes.items():
        owner_name, _, attribute = path.rpartition(".")
        owner = modules.get(owner_name)
        if owner is None or not hasattr(owner, attribute):
            raise ValueError(f"cannot update {path!r}: {owner_name or 'the model'} has no attribute {attribute!r}")
        setattr(owner, attribute, int(value))

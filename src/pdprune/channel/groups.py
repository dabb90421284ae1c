"""Coupled channel groups: output channels that must be pruned together.

A residual add ties the last convolution of a block to its shortcut; a BatchNorm follows its
convolution; a depthwise convolution's outputs are its inputs. Torch-Pruning's dependency graph
traces the model once on example inputs and finds these couplings (residuals, concatenations,
splits, norms, depthwise chains), so pdprune does not carry its own tracer.

Each group lists its *producers* (modules whose output channels carry the group: their weight
rows, bias and norm affine parameters are masked) and its *consumers* (modules whose input
channels follow; they are shrunk on removal and need no mask).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ChannelGroup", "ChannelMember", "find_channel_groups"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)
SCORED_TYPES = (nn.Linear, *_CONV, *_TRANSPOSED)


@dataclass
class ChannelMember:
    """A module whose output channels belong to a group, and where its channel axis lies."""

    name: str
    module: nn.Module
    weight_dim: int  # channel axis of ``module.weight``
    scored: bool  # its weights count in the channel score (Linear and convolutions)
    weight_name: str = "weight"
    bias_name: str = "bias"
    fold: int = 1  # the channel axis holds this many stacked copies of the group's channels (q, k, v: 3)

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.weight_name)

    def channel_params(self) -> list[tuple[str, int]]:
        """(parameter name, channel axis) of the parameters this member's mask multiplies."""
        params = []
        if getattr(self.module, self.weight_name, None) is not None:
            params.append((self.weight_name, self.weight_dim))
        if getattr(self.module, self.bias_name, None) is not None:
            params.append((self.bias_name, 0))
        return params

    def stacked(self, per_channel: torch.Tensor) -> torch.Tensor:
        """A per-channel tensor laid out along this member's channel axis (repeated ``fold`` times)."""
        return per_channel if self.fold == 1 else per_channel.repeat(self.fold)


@dataclass
class ChannelGroup:
    """Output channels pruned together, with one shared score and one shared mask.

    ``channels`` counts the group's prunable units: output channels for traced groups, or runs
    of ``width`` consecutive channels (attention heads) for declared ones. ``origin`` is "traced"
    (found by the dependency graph, removed through it), "heads" (attention heads found by
    pdprune) or "declared" (a :class:`~pdprune.ChannelGroupSpec`); the last two are removed
    layer by layer, then ``counts`` ("module.attr" -> "units"/"channels") are updated.
    """

    name: str  # the root module's name
    channels: int
    members: list[ChannelMember]
    consumers: dict[str, int]  # consumer -> input features per group channel (>1 after a flatten)
    root: nn.Module = field(repr=False)
    root_fn: Callable[..., Any] | None = field(repr=False)
    width: int = 1
    origin: str = "traced"
    counts: dict[str, str] = field(default_factory=dict)

    @property
    def unit_name(self) -> str:
        return "heads" if self.origin in ("heads", "mha-heads") else "channels" if self.width == 1 else "units"

    def has_depthwise(self) -> bool:
        """Whether the channels pass through a depthwise convolution (an expansion layer)."""
        return any(isinstance(m.module, _CONV) and m.module.groups > 1 and m.module.groups == m.module.in_channels
                   for m in self.members)

    def expand(self, per_unit: torch.Tensor) -> torch.Tensor:
        """A per-unit tensor repeated over each unit's ``width`` consecutive channels."""
        return per_unit if self.width == 1 else per_unit.repeat_interleave(self.width)

    def per_unit(self, per_channel: torch.Tensor) -> torch.Tensor:
        """Per-channel scores summed over each unit's channels."""
        return per_channel if self.width == 1 else per_channel.view(self.channels, self.width).sum(1)

    def channel_indices(self, units: list[int]) -> list[int]:
        """The channel indices of the given units."""
        return [u * self.width + i for u in units for i in range(self.width)]

    def scored_weights(self) -> list[tuple[torch.Tensor, int]]:
        """The Linear/conv weights of the group's channels (what L1-norm filter pruning ranks); a
        weight stacking several copies of the channels (q, k, v) is viewed with the copies on
        their own axis, so each channel's score sums over them."""
        weights = []
        for m in self.members:
            if not m.scored:
                continue
            weight = m.weight
            if m.fold > 1:
                weight = weight.view(*weight.shape[:m.weight_dim], m.fold, -1, *weight.shape[m.weight_dim + 1:])
                weights.append((weight, m.weight_dim + 1))
            else:
                weights.append((weight, m.weight_dim))
        return weights

    def scale_weights(self) -> list[tuple[torch.Tensor, int]]:
        """The parameters that set the channels' output scale, which PDP's channel norm measures.

        After a BatchNorm (or another per-channel norm with affine parameters) the output no
        longer depends on the conv or Linear weights' scale, only on the norm's weight and bias,
        so those are the channel's parameters then; without such a norm, the Linear/conv weights.
        """
        norms = [m.module for m in self.members if isinstance(m.module, _NORMS) and getattr(m.module, "affine", False)]
        if norms:
            return [(p, 0) for norm in norms for p in (norm.weight, norm.bias) if p is not None]
        return self.scored_weights()


def _member(name: str, module: nn.Module) -> ChannelMember | str:
    """The member for a producer module, or the reason it cannot be masked."""
    if isinstance(module, _TRANSPOSED):
        if module.groups != 1:
            return f"{name}: grouped transposed convolutions are not supported"
        return ChannelMember(name, module, 1, True)
    if isinstance(module, (nn.Linear, *_CONV)):
        return ChannelMember(name, module, 0, True)
    if isinstance(module, _CROSS_CHANNEL_NORMS):
        return f"{name}: {type(module).__name__} normalises across channels, so removing some would change the rest"
    if isinstance(module, _NORMS):
        return ChannelMember(name, module, 0, False)
    if not any(True for _ in module.parameters(recurse=False)):
        return ChannelMember(name, module, 0, False)  # e.g. a parameter-free op inside the chain
    return f"{name}: {type(module).__name__} layers cannot be channel-pruned with a mask"


def _output_layers(model: nn.Module, example_inputs: Any) -> set[nn.Module]:
    """Modules whose output is itself one of the model's outputs (their channels are the
    model's output size and must not be pruned)."""
    produced: dict[int, nn.Module] = {}
    alive: list[Any] = []  # ids are only unique while the tensors live: keep them all

    def record(mod: nn.Module, args: Any, out: Any) -> None:
        alive.append(out)
        produced[id(out)] = mod

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, SCORED_TYPES)]
    try:
        with torch.no_grad():
            outputs = _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    found = set()
    for tensor in _flatten(outputs):
        if id(tensor) in produced:
            found.add(produced[id(tensor)])
    return found


def trace(model: nn.Module, example_inputs: Any) -> Any:
    """Torch-Pruning's dependency graph of ``model``, traced by calling it as pdprune does (a
    tensor is one argument, a tuple/list positional arguments, a dict keyword arguments), with
    autograd on even inside no_grad or inference_mode (the tracer follows grad_fn)."""
    import torch_pruning as tp

    with torch.inference_mode(False), torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, forward_fn=lambda m, inputs: _call(m, inputs), verbose=False
        )


def _channel_count(member: ChannelMember) -> int | None:
    module = member.module
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[member.weight_dim])
    running = getattr(module, "running_mean", None)
    return int(running.shape[0]) if isinstance(running, torch.Tensor) else None


def _call(model: nn.Module, example_inputs: Any) -> Any:
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten(v)]
    return [t for v in getattr(value, "__dict__", {}).values() for t in _flatten(v)]


def find_channel_groups(
    model: nn.Module,
    example_inputs: Any,
    keep_module: Callable[[nn.Module, str], bool],
    exclude: Sequence[str] = (),
    declared: Sequence[Any] = (),
    heads: bool = False,
) -> tuple[Any, list[ChannelGroup], dict[str, str]]:
    """Trace ``model`` on ``example_inputs`` and return (dependency graph, prunable groups,
    {group name: why it is left alone} for groups that cannot or must not be pruned).

    A group is left alone when it contains a layer the filter rejects or ``exclude`` matches,
    a layer whose output is a model output (the classifier), or a layer type a mask cannot
    express. ``keep_module(module, name)`` is the config's filter (default: Linear and convs).
    ``declared`` groups (ChannelGroupSpec) and, with ``heads``, the attention heads found by
    :func:`~pdprune.channel.declared.attention_head_specs` replace the traced groups they share
    a layer with; a declared group that cannot be pruned is an error, not a skip.
    """
    from pdprune.channel.declared import attention_head_specs, build_declared

    try:
        import torch_pruning as tp
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("channel pruning needs torch-pruning: pip install 'torch-pruning>=1.6,<2'") from None

    was_training = model.training
    model.eval()
    try:
        outputs = _output_layers(model, example_inputs)
        graph = trace(model, example_inputs)
    finally:
        model.train(was_training)
    names = {module: name for name, module in model.named_modules()}
    groups: list[ChannelGroup] = []
    skipped: dict[str, str] = {}
    special: list[ChannelGroup] = []
    for spec, origin in [(s, "declared") for s in declared] + [(s, "heads") for s in (attention_head_specs(model) if heads else [])]:
        if origin == "heads" and any(set(spec.producers) & {m.name for m in g.members} for g in special):
            continue  # the user declared these heads already
        built = build_declared(model, spec, origin, outputs, keep_module, exclude)
        if isinstance(built, str):
            if origin == "declared":
                raise ValueError(f"declared channel group {spec.name!r} cannot be pruned: {built}")
            skipped[spec.name] = built
        else:
            special.append(built)
    if heads:
        from pdprune.channel.attention import mha_head_groups

        found, reasons = mha_head_groups(model, keep_module, exclude)
        special += [g for g in found if g.name not in {s.name for s in special}]
        skipped |= reasons
    claimed_out = {m.name for g in special for m in g.members}
    claimed_in = {c for g in special for c in g.consumers}
    for group in graph.get_all_groups(ignored_layers=[], root_module_types=SCORED_TYPES):
        root_item = group[0]
        root = root_item.dep.target.module
        root_name = names.get(root, "?")
        members: list[ChannelMember] = []
        consumers: dict[str, int] = {}
        reasons: list[str] = []
        for item in group:
            target = item.dep.target.module
            if not isinstance(target, nn.Module):
                reasons.append("a bare nn.Parameter is coupled to these channels")
                continue
            name = names.get(target)
            if name is None:
                continue  # an operation node (add, cat, ...) of the traced graph
            if isinstance(target, _CONV) and target.groups > 1 and not target.groups == target.in_channels == target.out_channels:
                reasons.append(f"{name} is a grouped convolution (groups={target.groups}): its channels could only go a "
                               f"whole group's worth at a time, which channel pruning does not do; exclude it or prune N:M")
                continue
            if not graph.is_out_channel_pruning_fn(item.dep.handler):
                consumers[name] = consumers.get(name, 0) + len(item.idxs)
                continue
            if list(item.idxs) != list(item.root_idxs):
                reasons.append(f"{name}: channels reordered relative to {root_name}")
                continue
            member = _member(name, target)
            if isinstance(member, str):
                reasons.append(member)
                continue
            size = _channel_count(member)
            if size is not None and size != len(root_item.idxs):
                reasons.append(f"{name} has {size} channels where the group has {len(root_item.idxs)} (a layer after a "
                               f"concatenation mixes several groups)")
                continue
            if target in outputs:
                reasons.append(f"{name} produces a model output")
            if member.scored and not keep_module(target, name):
                reasons.append(f"{name} is not selected by the filter")
            if any(re.search(p, name) for p in exclude):
                reasons.append(f"{name} is excluded")
            if all(m.module is not target for m in members):
                members.append(member)
        if {m.name for m in members} & claimed_out or set(consumers) & claimed_in:
            continue  # a declared group (or attention heads) covers these layers
        if reasons or not any(m.scored for m in members):
            skipped[root_name] = "; ".join(dict.fromkeys(reasons)) or "no prunable weights"
            continue
        channels = len(root_item.idxs)
        per_channel = {name: max(1, count // channels) for name, count in consumers.items()}
        groups.append(ChannelGroup(root_name, channels, members, per_channel, root, root_item.dep.handler))
    taken = {g.name for g in groups} | set(skipped)
    names_special = [g.name for g in special]
    clash = [g.name for g in special if g.name in taken or names_special.count(g.name) > 1]
    if clash:
        raise ValueError(f"declared channel group name(s) {sorted(set(clash))} are already taken by traced groups (named "
                         f"after their root layers) or attention-head groups (named after the attention module); "
                         f"choose other names")
    groups += special
    for name, why in _unfaithful_removals(model, example_inputs, groups).items():
        skipped[name] = why
    refused = [g for g in special if g.origin == "declared" and g.name in skipped]
    if refused:
        raise ValueError(f"declared channel group {refused[0].name!r} cannot be removed faithfully: {skipped[refused[0].name]}. "
                         f"Check its producers, consumers and units, and that the module's forward reads its size from "
                         f"the attributes in counts (or infers it, e.g. view(..., -1, head_dim)).")
    groups = [g for g in groups if g.name not in skipped]
    return graph, groups, skipped


def zero_channels(group: ChannelGroup, keep: torch.Tensor, modules: dict[str, nn.Module] | None = None) -> None:
    """Zero the channels ``keep`` drops in every producer of ``group`` (weight rows, bias, norm
    affine), in place; ``modules`` maps names to the modules of another copy of the model."""
    keep = group.expand(keep)
    with torch.no_grad():
        for member in group.members:
            module = modules[member.name] if modules is not None else member.module
            for param_name, dim in member.channel_params():
                parameter = getattr(module, param_name)
                shape = [1] * parameter.dim()
                shape[dim] = -1
                parameter.masked_fill_(~member.stacked(keep).view(shape), 0)  # +0.0, not the -0.0 a multiply leaves
            running = getattr(module, "running_mean", None)
            if isinstance(running, torch.Tensor) and running.shape == keep.shape:
                # A norm without affine parameters outputs -mean/std for a zero input channel in
                # eval; with the mean at zero the channel is exactly zero, as removal assumes.
                running.masked_fill_(~keep, 0)


def _unfaithful_removals(model: nn.Module, example_inputs: Any, groups: list[ChannelGroup]) -> dict[str, str]:
    """Groups whose removal would change what the model computes, found by trying it.

    On a copy of the model, a few channels spread over every group (first, middle, last) are
    zeroed as hardening does, the outputs recorded, then those channels are removed from the
    same copy; the outputs must not change. Where they do (a reshape that splits channels into
    attention heads, slicing by channel index, an activation with f(0) != 0 before a consumer),
    bisection names the culprits and the rest is tried again together.
    """
    import copy

    from pdprune.channel.declared import remove_units

    def trial_channels(g: ChannelGroup) -> list[int]:
        chosen = sorted({0, g.channels // 2, g.channels - 1})
        return chosen[1:] if len(chosen) >= g.channels else chosen  # always keep one

    def attempt(chosen: list[ChannelGroup]) -> str | None:
        trial = copy.deepcopy(model).eval()
        try:
            modules = dict(trial.named_modules())
            for g in chosen:
                keep = torch.ones(g.channels, dtype=torch.bool, device=g.scored_weights()[0][0].device)
                keep[trial_channels(g)] = False
                zero_channels(g, keep, modules)
            with torch.no_grad():
                expected = [t.clone() for t in _flatten(_call(trial, example_inputs))]
            graph = trace(trial, example_inputs)
            by_name = dict(trial.named_modules())
            for g in chosen:
                if g.origin == "traced":
                    root = by_name[g.name]
                    fn = graph.get_pruner_of_module(root).prune_out_channels
                    graph.get_pruning_group(root, fn, trial_channels(g)).prune()
            for g in chosen:
                if g.origin != "traced":
                    remove_units(g, trial_channels(g), by_name)
            with torch.no_grad():
                actual = _flatten(_call(trial, example_inputs))
        except Exception as error:  # noqa: BLE001 - any failure means the removal is not faithful
            return f"removing its channels breaks the forward pass ({type(error).__name__}: {str(error)[:120]})"
        for e, a in zip(expected, actual):
            if e.shape != a.shape:
                return f"removing its channels changes an output's shape {tuple(e.shape)} -> {tuple(a.shape)}"
            scale = float(e.float().abs().max()) or 1.0
            if float((e.float() - a.float()).abs().max()) > 1e-4 * scale:
                return ("removing its zeroed channels changes the outputs (channels split into attention heads by a "
                        "reshape, slicing by channel index, or an activation with f(0) != 0 before the next layer)")
        return None

    def culprits(chosen: list[ChannelGroup], why: str) -> dict[str, str]:
        if len(chosen) == 1:
            return {chosen[0].name: why}
        found: dict[str, str] = {}
        half = len(chosen) // 2
        for part in (chosen[:half], chosen[half:]):
            reason = attempt(part)
            if reason is not None:
                found |= culprits(part, reason)
        return found

    remaining = [g for g in groups if g.channels > 1]
    found: dict[str, str] = {}
    while remaining:
        why = attempt(remaining)
        if why is None:
            break
        new = culprits(remaining, why)
        if not new:  # only the combination fails: leave them all alone rather than guess
            new = {g.name: f"removing it together with the other groups fails: {why}" for g in remaining}
        found |= new
        remaining = [g for g in remaining if g.name not in new]
    return found

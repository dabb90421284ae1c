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

    def channel_params(self) -> list[tuple[str, int]]:
        """(parameter name, channel axis) of the parameters this member's mask multiplies."""
        params = []
        if getattr(self.module, "weight", None) is not None:
            params.append(("weight", self.weight_dim))
        if getattr(self.module, "bias", None) is not None:
            params.append(("bias", 0))
        return params


@dataclass
class ChannelGroup:
    """Output channels pruned together, with one shared score and one shared mask."""

    name: str  # the root module's name
    channels: int
    members: list[ChannelMember]
    consumers: dict[str, int]  # consumer -> input features per group channel (>1 after a flatten)
    root: nn.Module = field(repr=False)
    root_fn: Callable[..., Any] = field(repr=False)

    def scored_weights(self) -> list[tuple[torch.Tensor, int]]:
        return [(m.module.weight, m.weight_dim) for m in self.members if m.scored]


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
    handles = [m.register_forward_hook(lambda mod, args, out: produced.__setitem__(id(out), mod))
               for m in model.modules() if isinstance(m, SCORED_TYPES)]
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
) -> tuple[Any, list[ChannelGroup], dict[str, str]]:
    """Trace ``model`` on ``example_inputs`` and return (dependency graph, prunable groups,
    {group name: why it is left alone} for groups that cannot or must not be pruned).

    A group is left alone when it contains a layer the filter rejects or ``exclude`` matches,
    a layer whose output is a model output (the classifier), or a layer type a mask cannot
    express. ``keep_module(module, name)`` is the config's filter (default: Linear and convs).
    """
    try:
        import torch_pruning as tp
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("channel pruning needs torch-pruning: pip install 'torch-pruning>=1.6,<2'") from None

    was_training = model.training
    model.eval()
    try:
        outputs = _output_layers(model, example_inputs)
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    finally:
        model.train(was_training)
    names = {module: name for name, module in model.named_modules()}
    groups: list[ChannelGroup] = []
    skipped: dict[str, str] = {}
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
            if target in outputs:
                reasons.append(f"{name} produces a model output")
            if member.scored and not keep_module(target, name):
                reasons.append(f"{name} is not selected by the filter")
            if any(re.search(p, name) for p in exclude):
                reasons.append(f"{name} is excluded")
            if all(m.module is not target for m in members):
                members.append(member)
        if reasons or not any(m.scored for m in members):
            skipped[root_name] = "; ".join(dict.fromkeys(reasons)) or "no prunable weights"
            continue
        channels = len(root_item.idxs)
        per_channel = {name: max(1, count // channels) for name, count in consumers.items()}
        groups.append(ChannelGroup(root_name, channels, members, per_channel, root, root_item.dep.handler))
    for name, why in _unfaithful_removals(model, example_inputs, groups).items():
        skipped[name] = why
    groups = [g for g in groups if g.name not in skipped]
    return graph, groups, skipped


def zero_channels(group: ChannelGroup, keep: torch.Tensor, modules: dict[str, nn.Module] | None = None) -> None:
    """Zero the channels ``keep`` drops in every producer of ``group`` (weight rows, bias, norm
    affine), in place; ``modules`` maps names to the modules of another copy of the model."""
    with torch.no_grad():
        for member in group.members:
            module = modules[member.name] if modules is not None else member.module
            for param_name, dim in member.channel_params():
                parameter = getattr(module, param_name)
                shape = [1] * parameter.dim()
                shape[dim] = -1
                parameter.masked_fill_(~keep.view(shape), 0)  # +0.0, not the -0.0 a multiply leaves


def _unfaithful_removals(model: nn.Module, example_inputs: Any, groups: list[ChannelGroup]) -> dict[str, str]:
    """Groups whose removal would change what the model computes, found by trying it.

    On copies of the model, the last channel of every group is zeroed (as hardening does) and
    then physically removed; the two copies must agree. Where they do not (a reshape that
    splits channels into attention heads, an activation with f(0) != 0 before a consumer), each
    group is tried alone to name the culprits. Groups of one channel are not tried (they keep it).
    """
    import copy

    triable = [g for g in groups if g.channels > 1]
    if not triable:
        return {}

    def attempt(chosen: list[ChannelGroup]) -> str | None:
        import torch_pruning as tp

        reference = copy.deepcopy(model).eval()
        modules = dict(reference.named_modules())
        for g in chosen:
            keep = torch.ones(g.channels, dtype=torch.bool)
            keep[-1] = False
            zero_channels(g, keep, modules)
        removed = copy.deepcopy(reference)
        try:
            with torch.no_grad():
                expected = _flatten(_call(reference, example_inputs))
            graph = tp.DependencyGraph().build_dependency(removed, example_inputs=example_inputs, verbose=False)
            by_name = dict(removed.named_modules())
            for g in chosen:
                root = by_name[g.name]
                fn = graph.get_pruner_of_module(root).prune_out_channels
                graph.get_pruning_group(root, fn, [g.channels - 1]).prune()
            with torch.no_grad():
                actual = _flatten(_call(removed, example_inputs))
        except Exception as error:  # noqa: BLE001 - any failure means the removal is not faithful
            return f"removing its channels breaks the forward pass ({type(error).__name__}: {str(error)[:120]})"
        for e, a in zip(expected, actual):
            if e.shape != a.shape:
                return f"removing its channels changes an output's shape {tuple(e.shape)} -> {tuple(a.shape)}"
            scale = float(e.float().abs().max()) or 1.0
            if float((e.float() - a.float()).abs().max()) > 1e-4 * scale:
                return ("removing its zeroed channels changes the outputs (channels split into attention heads by a "
                        "reshape, or an activation with f(0) != 0 before the next layer)")
        return None

    if attempt(triable) is None:
        return {}
    found = {}
    for g in triable:
        why = attempt([g])
        if why is not None:
            found[g.name] = why
    return found

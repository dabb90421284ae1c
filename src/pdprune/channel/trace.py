"""Finding coupled channel groups by tracing: Torch-Pruning's dependency graph plus pdprune's
declared and attention-head groups, each checked by trying its removal on a copy of the model."""

from __future__ import annotations

import contextlib
import copy
import re
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from pdprune.channel.attention import mha_head_groups
from pdprune.channel.declared import DeclaredGroup, HeadGroup, LayoutGroup, build_declared
from pdprune.channel.groups import (
    CONV_TYPES,
    SCORED_TYPES,
    ChannelGroup,
    ChannelMember,
    TracedGroup,
    call_model,
    flatten_outputs,
    member_for,
    zero_channels,
)
from pdprune.channel.transformer_layouts import transformer_layouts

__all__ = ["find_channel_groups", "trace"]


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
            outputs = call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    found = set()
    for tensor in flatten_outputs(outputs):
        if id(tensor) in produced:
            found.add(produced[id(tensor)])
    return found


#: How long the dependency search may run before channel pruning gives up with the way out.
TRACE_SECONDS = 300.0


@contextlib.contextmanager
def _time_limit(seconds: float, model_name: str) -> Iterator[None]:
    """Raise TimeoutError naming the way out if the block runs longer than ``seconds``. A timer
    signal interrupts it, so this bounds it only in the main thread of a POSIX process."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def give_up(signum: int, frame: Any) -> None:
        raise TimeoutError(
            f"finding the coupled channels of {model_name} took more than {seconds:g} s, and the search may "
            "never finish (Torch-Pruning's dependency graph through some attention layouts does not). "
            "Declare the groups to prune with pdprune.Channels(groups=[pdprune.ChannelGroupSpec(...)]) and "
            "leave the layers tracing cannot follow out with exclude=[...], or prune unstructured or N:M."
        )

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _why_left_alone(reasons: list[str], shown: int = 3) -> str:
    """The reasons a group is left alone in one line: a reason that many layers give ("LayerNorm
    normalises across channels", as in every transformer block) is said once, with the layers."""
    layers_for: dict[str, list[str]] = {}
    for reason in dict.fromkeys(reasons):
        name, colon, why = reason.partition(": ")
        key, layer = (why, name) if colon and " " not in name else (reason, "")
        layers_for.setdefault(key, []).append(layer)
    parts = []
    for why, layers in layers_for.items():
        named = [layer for layer in layers if layer]
        if not named:
            parts.append(why)
        elif len(named) == 1:
            parts.append(f"{named[0]}: {why}")
        else:
            more = f" and {len(named) - shown} more" if len(named) > shown else ""
            parts.append(f"{why} ({len(named)} layers: {', '.join(named[:shown])}{more})")
    return "; ".join(parts)


def trace(model: nn.Module, example_inputs: Any) -> Any:
    """Torch-Pruning's dependency graph of ``model``, traced by calling it as pdprune does (a
    tensor is one argument, a tuple/list positional arguments, a dict keyword arguments), with
    autograd on even inside no_grad or inference_mode (the tracer follows grad_fn)."""
    import torch_pruning as tp

    with torch.inference_mode(False), torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example_inputs,
            forward_fn=lambda m, inputs: call_model(m, inputs),
            verbose=False,
        )


def _channel_count(member: ChannelMember) -> int | None:
    module = member.module
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[member.weight_dim])
    running = getattr(module, "running_mean", None)
    return int(running.shape[0]) if isinstance(running, torch.Tensor) else None


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
    ``declared`` groups (ChannelGroupSpec), the groups found in transformer layouts
    (:func:`~pdprune.channel.transformer_layouts.transformer_layouts`; their attention heads
    with ``heads``) replace the traced groups they share a layer with; a declared group that
    cannot be pruned is an error, not a skip.
    """
    try:
        import torch_pruning  # noqa: F401 - only checks it is installed, to fail with the fix
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError(
            "channel pruning needs torch-pruning: pip install 'torch-pruning>=1.6,<2'"
        ) from None

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
    layouts = transformer_layouts(model)
    kinds: list[tuple[Any, type[DeclaredGroup]]] = [(s, DeclaredGroup) for s in declared]
    kinds += [(s, HeadGroup) for s in (layouts.heads if heads else [])]
    kinds += [(s, LayoutGroup) for s in layouts.channels]
    skipped |= layouts.reasons if heads else {}
    for spec, kind in kinds:
        if kind is not DeclaredGroup and any(
            set(spec.producers) & {m.name for m in g.members} for g in special
        ):
            continue  # the user declared these layers' group already
        built = build_declared(model, spec, kind, outputs, keep_module, exclude)
        if isinstance(built, str):
            if kind is DeclaredGroup:
                raise ValueError(f"declared channel group {spec.name!r} cannot be pruned: {built}")
            skipped[spec.name] = built
        else:
            special.append(built)
    if heads:
        found, reasons = mha_head_groups(model, keep_module, exclude)
        special += [g for g in found if g.name not in {s.name for s in special}]
        skipped |= reasons
    claimed_out = {m.name for g in special for m in g.members}
    claimed_in = {c for g in special for c in g.consumers}
    with _time_limit(TRACE_SECONDS, type(model).__name__):
        traced = list(graph.get_all_groups(ignored_layers=layouts.untraced, root_module_types=SCORED_TYPES))
    for group in traced:
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
            if (
                isinstance(target, CONV_TYPES)
                and target.groups > 1
                and not target.groups == target.in_channels == target.out_channels
            ):
                reasons.append(
                    f"{name} is a grouped convolution (groups={target.groups}): its channels could only go a "
                    "whole group's worth at a time, which channel pruning does not do; exclude it or prune "
                    "N:M"
                )
                continue
            if not graph.is_out_channel_pruning_fn(item.dep.handler):
                consumers[name] = consumers.get(name, 0) + len(item.idxs)
                continue
            if list(item.idxs) != list(item.root_idxs):
                reasons.append(f"{name}: channels reordered relative to {root_name}")
                continue
            member = member_for(name, target)
            if isinstance(member, str):
                reasons.append(member)
                continue
            size = _channel_count(member)
            if size is not None and size != len(root_item.idxs):
                reasons.append(
                    f"{name} has {size} channels where the group has {len(root_item.idxs)} (a layer after a "
                    f"concatenation mixes several groups)"
                )
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
            skipped[root_name] = _why_left_alone(reasons) or "no prunable weights"
            continue
        channels = len(root_item.idxs)
        per_channel = {name: max(1, count // channels) for name, count in consumers.items()}
        groups.append(TracedGroup(root_name, channels, members, per_channel, root, root_item.dep.handler))
    taken = {g.name for g in groups} | set(skipped)
    names_special = [g.name for g in special]
    clash = [g.name for g in special if g.name in taken or names_special.count(g.name) > 1]
    if clash:
        raise ValueError(
            f"declared channel group name(s) {sorted(set(clash))} are already taken by traced groups (named "
            f"after their root layers) or attention-head groups (named after the attention module); "
            f"choose other names"
        )
    groups += special
    for name, why in _unfaithful_removals(model, example_inputs, groups).items():
        skipped[name] = why
    refused = [g for g in special if type(g) is DeclaredGroup and g.name in skipped]
    if refused:
        raise ValueError(
            f"declared channel group {refused[0].name!r} cannot be removed faithfully: "
            f"{skipped[refused[0].name]}. "
            f"Check its producers, consumers and units, and that the module's forward reads its size from "
            f"the attributes in counts (or infers it, e.g. view(..., -1, head_dim))."
        )
    groups = [g for g in groups if g.name not in skipped]
    return graph, groups, skipped


def _unfaithful_removals(model: nn.Module, example_inputs: Any, groups: list[ChannelGroup]) -> dict[str, str]:
    """Groups whose removal would change what the model computes, found by trying it.

    On a copy of the model, a few channels spread over every group (first, middle, last) are
    zeroed as hardening does, the outputs recorded, then those channels are removed from the
    same copy; the outputs must not change. Where they do (a reshape that splits channels into
    attention heads, slicing by channel index, an activation with f(0) != 0 before a consumer),
    bisection names the culprits and the rest is tried again together.
    """

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
                expected = [t.clone() for t in flatten_outputs(call_model(trial, example_inputs))]
            graph = trace(trial, example_inputs)
            by_name = dict(trial.named_modules())
            for g in sorted(
                chosen, key=lambda g: not g.through_graph
            ):  # the graph was traced before any removal
                g.remove(trial_channels(g), by_name, graph)
            with torch.no_grad():
                actual = flatten_outputs(call_model(trial, example_inputs))
        except Exception as error:
            return (
                f"removing its channels breaks the forward pass ({type(error).__name__}: {str(error)[:120]})"
            )
        for e, a in zip(expected, actual):
            if e.shape != a.shape:
                return f"removing its channels changes an output's shape {tuple(e.shape)} -> {tuple(a.shape)}"
            scale = float(e.float().abs().max()) or 1.0
            if float((e.float() - a.float()).abs().max()) > 1e-4 * scale:
                return (
                    "removing its zeroed channels changes the outputs (channels split into attention heads "
                    "by a "
                    "reshape, slicing by channel index, or an activation with f(0) != 0 before the next "
                    "layer)"
                )
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

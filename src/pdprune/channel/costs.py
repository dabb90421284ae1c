"""Parameters and multiply-accumulates of every Linear and convolution, before and after channel
pruning, and the per-group channel budgets that hit a target in channels, parameters or FLOPs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pdprune.channel.groups import SCORED_TYPES, ChannelGroup, call_model
from pdprune.patterns.specs import is_transformers_conv1d

__all__ = ["LayerCost", "measure_costs", "solve_keep", "widths"]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class LayerCost:
    """One Linear/conv layer: its size, its MACs for one forward of the example inputs, and the
    groups its output and input channels belong to."""

    name: str
    module_type: str
    out_channels: int
    in_channels: int
    params: int  # weight and bias
    bias: int
    macs: int
    out_group: str | None
    in_groups: tuple[tuple[str, int], ...]  # (group, input features per group channel)
    depthwise: bool

    def fractions(self, keep: dict[str, int], channels: dict[str, int]) -> tuple[float, float]:
        """Fractions of output and input channels that remain under ``keep``."""
        out = keep[self.out_group] / channels[self.out_group] if self.out_group in keep else 1.0
        if self.depthwise:
            return out, out
        removed = sum((channels[g] - keep[g]) * per for g, per in self.in_groups if g in keep)
        return out, max(0.0, 1.0 - removed / self.in_channels)

    def after(self, keep: dict[str, int], channels: dict[str, int]) -> tuple[int, int]:
        """(params, MACs) once the pruned channels are removed."""
        out, inp = self.fractions(keep, channels)
        factor = out if self.depthwise else out * inp
        weights = self.params - self.bias
        return round(weights * factor) + round(self.bias * out), round(self.macs * factor)


def measure_costs(model: nn.Module, example_inputs: Any, groups: list[ChannelGroup]) -> list[LayerCost]:
    """Run the example inputs once and count each Linear/conv layer's parameters and MACs."""
    out_group = {id(m.module): g.name for g in groups for m in g.members}
    in_groups: dict[str, list[tuple[str, int]]] = {}
    for g in groups:
        for consumer, per in g.consumers.items():
            in_groups.setdefault(consumer, []).append((g.name, per))
    macs: dict[int, int] = {}

    def count(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        weight = module.weight
        if isinstance(module, nn.Linear):
            n = output.numel() * module.in_features
        elif is_transformers_conv1d(module):
            n = output.numel() * weight.shape[0]
        elif isinstance(module, _TRANSPOSED):
            n = args[0].numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
        else:
            n = output.numel() * weight.shape[1] * math.prod(module.kernel_size)
        macs[id(module)] = macs.get(id(module), 0) + int(n)

    def count_attention(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        # nn.MultiheadAttention projects with its in_proj_weight and out_proj.weight directly (the
        # out_proj module is never called): each projection costs tokens x its input x its output.
        q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")[len(args) :]])[:3]
        inner = module.out_proj.in_features
        macs[id(module)] = macs.get(id(module), 0) + (q.numel() + k.numel() + v.numel()) * inner
        macs[id(module.out_proj)] = macs.get(id(module.out_proj), 0) + q.numel() * inner

    layers = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (*SCORED_TYPES, nn.MultiheadAttention)) or is_transformers_conv1d(m)
    ]
    handles = [
        m.register_forward_hook(count_attention, with_kwargs=True)
        if isinstance(m, nn.MultiheadAttention)
        else m.register_forward_hook(count)
        for _, m in layers
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    costs = []
    for name, m in layers:
        if isinstance(m, nn.MultiheadAttention):  # its q, k, v projection (out_proj is a Linear of its own)
            weight, bias_tensor = m.in_proj_weight, m.in_proj_bias
            if weight is None:  # separate q/k/v weights: not prunable by heads, counted as they are
                weights = [w for w in (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight) if w is not None]
                bias = bias_tensor.numel() if bias_tensor is not None else 0
                costs.append(
                    LayerCost(
                        name,
                        "MultiheadAttention (q, k, v)",
                        sum(w.shape[0] for w in weights),
                        m.embed_dim,
                        sum(w.numel() for w in weights) + bias,
                        bias,
                        macs.get(id(m), 0),
                        None,
                        (),
                        False,
                    )
                )
                continue
            bias = bias_tensor.numel() if bias_tensor is not None else 0
            costs.append(
                LayerCost(
                    name,
                    "MultiheadAttention (q, k, v)",
                    weight.shape[0],
                    weight.shape[1],
                    weight.numel() + bias,
                    bias,
                    macs.get(id(m), 0),
                    out_group.get(id(m)),
                    (),
                    False,
                )
            )
            continue
        if isinstance(m, nn.Linear):
            out_ch, in_ch, depthwise = m.out_features, m.in_features, False
        elif is_transformers_conv1d(m):
            in_ch, out_ch = m.weight.shape
            depthwise = False
        else:
            out_ch, in_ch = m.out_channels, m.in_channels
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        bias = m.bias.numel() if m.bias is not None else 0
        costs.append(
            LayerCost(
                name,
                type(m).__name__,
                out_ch,
                in_ch,
                m.weight.numel() + bias,
                bias,
                macs.get(id(m), 0),
                out_group.get(id(m)),
                tuple(in_groups.get(name, ())),
                depthwise,
            )
        )
    return costs


def widths(channels: int, fraction: float, round_to: int) -> int:
    """Channels kept in a group of ``channels`` at ``fraction`` kept: at least one, a multiple of
    ``round_to`` where the group is wide enough, never more than the group."""
    keep = max(1, round(fraction * channels))
    if round_to > 1 and channels >= round_to:
        keep = max(round_to, round(keep / round_to) * round_to)
    return min(channels, keep)


def solve_keep(
    groups: list[ChannelGroup], costs: list[LayerCost], sparsity: float, unit: str, round_to: int
) -> dict[str, int]:
    """Channels each group keeps so that ``sparsity`` of the unit is removed.

    "channels": every group keeps the same fraction, 1 - sparsity. "params"/"flops": the kept
    fraction is the largest one whose Linear/conv parameters (or MACs) over the whole model are at
    most (1 - sparsity) of the dense count, so layers that cannot shrink (the classifier) count too.
    """
    channels = {g.name: g.channels for g in groups}

    steps = {g.name: unit_step(g, round_to) for g in groups}

    def keep_at(fraction: float) -> dict[str, int]:
        return {g.name: widths(g.channels, fraction, steps[g.name]) for g in groups}

    if unit == "channels":
        return keep_at(1.0 - sparsity)
    index = 0 if unit == "params" else 1
    dense = sum((c.params, c.macs)[index] for c in costs)
    if dense == 0:
        raise ValueError("the example inputs ran no Linear or convolution layer: nothing to budget")

    def cost(fraction: float) -> float:
        keep = keep_at(fraction)
        return sum(c.after(keep, channels)[index] for c in costs) / dense

    target = 1.0 - sparsity
    if cost(0.0) > target + 1e-12:
        raise ValueError(
            f"removing {sparsity:.0%} of the {unit} is out of reach: with one channel per group the "
            f"prunable layers still hold {cost(0.0):.1%} of them (layers outside any group, such as the "
            f"classifier, cannot shrink). Ask for at most {1 - cost(0.0):.0%}."
        )
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if cost(mid) <= target else (low, mid)
    return _top_up(keep_at(low), low, groups, costs, channels, index, dense * target, steps)


def unit_step(group: ChannelGroup, round_to: int) -> int:
    """Units a group's width moves by so its kept channels stay multiples of ``round_to`` (a head
    of 64 channels is already a multiple of 8: one head at a time)."""
    return max(1, round_to // math.gcd(round_to, group.width))


def _top_up(
    keep: dict[str, int],
    fraction: float,
    groups: list[ChannelGroup],
    costs: list[LayerCost],
    channels: dict[str, int],
    index: int,
    allowed: float,
    steps: dict[str, int],
) -> dict[str, int]:
    """Give back channels, ``step`` at a time, while the budget allows.

    One common fraction moves every group's rounded width at once, so the best uniform fraction can
    stop well short of the budget (with widths rounded to 8, a 50% FLOPs target removed 54% of a
    ResNet-18). Groups furthest below their exact share are topped up first, so widths stay close
    to uniform and the budget is met as closely as the step allows, never exceeded.
    """
    keep = dict(keep)

    def total() -> float:
        return sum(c.after(keep, channels)[index] for c in costs)

    order = sorted(groups, key=lambda g: keep[g.name] - fraction * g.channels)
    grew = True
    while grew:
        grew = False
        for group in order:
            step = steps[group.name]
            if keep[group.name] + step > group.channels or (step > 1 and group.channels < step):
                continue
            keep[group.name] += step
            if total() <= allowed:
                grew = True
            else:
                keep[group.name] -= step
        order.sort(key=lambda g: keep[g.name] / g.channels)
    return keep

"""The channel pruner: whole output channels (and attention heads) plugged into the engine,
then removed physically.

    pruner = pdprune.prepare(model, PruneConfig(sparsity=0.5, pattern="channel", schedule=...),
                             example_inputs=batch)
    ... loss.backward(); optimizer.step(); pruner.step()
    pruner.finalize()        # the pruned channels hold exact zeros; shapes unchanged
    pruner.shrink()          # the same model object, with smaller layers
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import nn

from pdprune.channel.costs import LayerCost, measure_costs, solve_keep
from pdprune.channel.groups import ChannelGroup, Removal, zero_channels
from pdprune.channel.inputs import input_spec, plain_inputs
from pdprune.channel.report import ChannelLayerReport, ChannelReport
from pdprune.channel.trace import find_channel_groups
from pdprune.config import ChannelConfig
from pdprune.engine.base import MaskInTraining, Pruner
from pdprune.engine.collective import distributed, meet
from pdprune.patterns.channels import ChannelHook, ChannelTarget
from pdprune.patterns.weights import default_filter
from pdprune.schedule import settle_fraction
from pdprune.sharding import is_sharded

__all__ = ["ChannelPruner"]


class ChannelPruner(Pruner[ChannelConfig, ChannelTarget]):
    """Learns which output channels to keep, one shared soft mask per coupled group."""

    kind: ClassVar[str] = "channel"
    needs_example_inputs: ClassVar[bool] = True

    def __init__(self, model: nn.Module, config: ChannelConfig, example_inputs: Any) -> None:
        pattern = config.pattern
        sharded = [name for name, p in model.named_parameters() if is_sharded(p)]
        if sharded:
            raise ValueError(
                f"{type(model).__name__} is already sharded by FSDP2 ({sharded[0]} is a DTensor): channel "
                "pruning traces the coupled channels on the whole model, so call pdprune.prepare "
                "before fully_shard"
            )
        example_inputs = plain_inputs(example_inputs)
        self.example_spec = input_spec(example_inputs)  # fails now, not after training, if it cannot be saved
        self.graph, groups, self.skipped = find_channel_groups(
            model,
            example_inputs,
            config.filter_fn or default_filter,
            config.exclude,
            declared=pattern.groups,
            heads=pattern.heads,
        )
        if config.include:
            chosen = [
                g for g in groups if any(re.search(p, m.name) for p in config.include for m in g.members)
            ]
            for g in groups:
                if g not in chosen:
                    self.skipped[g.name] = "not matched by include"
            groups = chosen
        if pattern.scope == "expansion":
            for g in groups:
                if not g.has_depthwise():
                    self.skipped[g.name] = "outside scope='expansion' (no depthwise convolution in the group)"
            groups = [g for g in groups if g.has_depthwise()]
        if not groups:
            reasons = (
                "; ".join(f"{k}: {v}" for k, v in list(self.skipped.items())[:6])
                or "no Linear or convolution"
            )
            raise ValueError(
                f"{type(model).__name__} has no channel group that can be pruned ({reasons}). Check the "
                f"filter, include and exclude settings, or prune unstructured or N:M instead."
            )
        self.groups: dict[str, ChannelGroup] = {g.name: g for g in groups}
        self.costs: list[LayerCost] = measure_costs(model, example_inputs, groups)
        self.keep: dict[str, int] = solve_keep(
            groups, self.costs, config.sparsity, pattern.unit, pattern.round_to
        )
        self._hooks: list[ChannelHook] = []
        self.kept: dict[str, torch.Tensor] = {}  # per group, fixed by finalize()
        self.shrunk = False
        self._removals: list[Removal] = []
        self._attributes: dict[str, int] = {}
        self._model_params_before = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        targets = [ChannelTarget(g, self.keep[g.name], pattern.tau) for g in groups]
        super().__init__(model, config, targets)

    # ----------------------------------------------------------------- after finalize
    def shrink(self) -> nn.Module:
        """Remove the zeroed channels physically: every coupled layer (convs, norms, Linear, the
        consumers' input channels) gets smaller, in place. Returns the model. Build the optimizer
        anew afterwards: its parameters are replaced."""
        if not self.finalized:
            raise RuntimeError("call finalize() first")
        if self.shrunk:
            raise RuntimeError("this model is already shrunk")
        sharded = [name for t in self.targets.values() for name in t.sharded()]
        if sharded:
            raise RuntimeError(
                f"FSDP2 shards {sharded[0]}: layers cannot shrink while their rows are spread over "
                "ranks. Gather the finalized model's full state dict, load it into a model of the same "
                "class on one process, and shrink there (docs/distributed.md, 'Channels under FSDP2')"
            )
        regrown = [name for name, group in self.groups.items() if _nonzero_in_pruned(group, self.kept[name])]
        if regrown:
            raise RuntimeError(
                f"channels zeroed by finalize() are no longer zero in {', '.join(regrown[:5])} (training "
                "went on after "
                "finalize()?), so removing them would change the model. Call shrink() right after "
                "finalize() and "
                f"fine-tune the shrunk model instead."
            )
        modules = dict(self.model.named_modules())
        for name, group in sorted(self.groups.items(), key=lambda item: not item[1].through_graph):
            removals, attributes = group.remove(
                (~self.kept[name]).nonzero().flatten().tolist(), modules, self.graph
            )
            self._removals += removals
            self._attributes |= attributes
        self.shrunk = True
        return self.model

    def pruning_plan(self) -> list[list[Any]]:
        """The removals :meth:`shrink` made through the traced graph, replayable on a fresh model of
        the same class (see :func:`pdprune.save_shrunk` / :func:`pdprune.load_shrunk`)."""
        self._require_shrunk()
        return [
            [name, bool(is_out), [int(i) for i in idxs]]
            for name, is_out, idxs in self.graph.pruning_history()
        ]

    def declared_plan(self) -> dict[str, Any]:
        """The layer-by-layer removals and size attributes of attention heads and declared groups,
        applied after :meth:`pruning_plan`'s (empty when there are none), and each such group's
        sizes, against which a loader checks the attributes."""
        self._require_shrunk()
        groups = [
            {
                "name": name,
                "units": group.channels,
                "kept": int(self.kept[name].sum()),
                "width": group.width,
                "counts": dict(group.counts),
                "producers": [member.name for member in group.members],
                "consumers": list(group.consumers),
                **_widths_unlike_the_group(group),
            }
            for name, group in self.groups.items()
            if group.counts and int(self.kept[name].sum()) < group.channels
        ]
        return {
            "removals": [list(r) for r in self._removals],
            "attributes": dict(self._attributes),
            "groups": groups,
        }

    def masks(self) -> dict[str, torch.Tensor]:
        """Per group, the boolean units :meth:`finalize` keeps (or kept)."""
        if self.kept:
            return {k: v.clone() for k, v in self.kept.items()}
        return super().masks()

    def report(self) -> ChannelReport:
        self._check_still_attached()
        keep = self.keep if not self.removed else {name: g.channels for name, g in self.groups.items()}
        channels = {name: g.channels for name, g in self.groups.items()}
        layers = []
        for cost in self.costs:
            out_f, in_f = cost.fractions(keep, channels)
            params, macs = cost.after(keep, channels)
            layers.append(
                ChannelLayerReport(
                    cost.name,
                    cost.module_type,
                    (cost.out_channels, round(cost.out_channels * out_f)),
                    (cost.in_channels, round(cost.in_channels * in_f)),
                    (cost.params, params),
                    (cost.macs, macs),
                )
            )
        removed = sum(c.params - c.after(keep, channels)[0] for c in self.costs)
        # Per-channel parameters outside Linear/conv layers (norm affine) go with their channels too.
        removed += sum(
            (g.channels - keep[name]) * g.member_width(m) * len(m.channel_params())
            for name, g in self.groups.items()
            for m in g.members
            if not m.scored
        )
        after = self._model_params() if self.shrunk else self._model_params_before - removed
        return ChannelReport(
            unit=self.config.pattern.unit,
            target_sparsity=self.config.sparsity,
            groups={name: (g.channels, keep[name]) for name, g in self.groups.items()},
            group_units={name: (g.unit_label, g.width) for name, g in self.groups.items() if g.width > 1},
            layers=layers,
            skipped=dict(self.skipped),
            model_params=(self._model_params_before, after),
            finalized=self.finalized,
            shrunk=self.shrunk,
            step=self.step_count,
            removed=self.removed,
        )

    # ----------------------------------------------------------------- engine hooks
    def _attach(self, target: ChannelTarget) -> list[torch.utils.hooks.RemovableHandle]:
        mask = MaskInTraining(self.config.method, target, self.state).channels
        handles = []
        for member in target.group.members:
            hook = ChannelHook(target, member, mask)
            self._hooks.append(hook)
            handles += hook.attach(member.module)
        return handles

    def _meet_for_shards(self, call: str) -> None:
        if distributed() and any(t.sharded() or t.sharded("l1") for t in self.targets.values()):
            meet(call, "which all-reduces the channel norms of weights that FSDP2 shards")

    def _compute_budgets(self, preview: bool, call: str) -> dict[str, float]:
        return {name: float(keep) for name, keep in self.keep.items()}  # fixed by the costs, not the weights

    def _set_in_force(self, target: ChannelTarget, progress: float, budget: float | None) -> None:
        schedule = self.config.schedule
        sharpness = settle_fraction(
            self.step_count,
            schedule.warmup_steps + schedule.ramp_steps,
            schedule.total_steps,
            self.config.pattern.settle,
        )
        target.progress, target.temperature_scale = progress, 1.0 - sharpness

    def _in_force(self) -> bool:
        return any(t.progress > 0.0 for t in self.targets.values())

    def _final_mask(self, target: ChannelTarget, budget: float) -> torch.Tensor:
        return self.config.method.final_channels(target, self.state[target.name])

    def _harden(self, target: ChannelTarget, keep: torch.Tensor) -> None:
        zero_channels(target.group, keep)
        self.kept[target.name] = keep

    def _versions(self) -> list[int]:
        return [weight._version for t in self.targets.values() for weight, *_ in t.group.score_parts("l1")]

    def _never_called(self) -> list[str]:
        return [f"{hook.member.name} (group {hook.target.name})" for hook in self._hooks if hook.calls == 0]

    def _target_fingerprint(self) -> dict[str, Any]:
        return {name: [g.channels, self.keep[name]] for name, g in self.groups.items()}

    def _require_shrunk(self) -> None:
        if not self.shrunk:
            raise RuntimeError(
                "call finalize() and shrink() first: the plan records the removals shrink() made"
            )


def _nonzero_in_pruned(group: ChannelGroup, keep: torch.Tensor) -> bool:
    for member in group.members:
        dropped_channels = ~group.lay_out(member, keep)
        for param_name, dim in member.channel_params():
            parameter = getattr(member.module, param_name).detach()
            dropped = dropped_channels.nonzero().flatten().to(parameter.device)
            if bool(parameter.index_select(dim, dropped).ne(0).any()):
                return True
    return False


def _widths_unlike_the_group(group: ChannelGroup) -> dict[str, dict[str, int]]:
    """The plan's ``widths`` entry: layers whose channels per unit are not the group's width."""
    widths = {m.name: group.member_width(m) for m in group.members if group.member_width(m) != group.width}
    widths |= {name: per for name, per in group.consumers.items() if per != group.width}
    return {"widths": widths} if widths else {}

"""The channel pruner: PDP over whole output channels, then physical removal.

    pruner = pdprune.prepare(model, PruneConfig(sparsity=0.5, pattern="channel", schedule=...),
                             example_inputs=batch)
    ... loss.backward(); optimizer.step(); pruner.step()
    pruner.finalize()        # the pruned channels hold exact zeros; shapes unchanged
    pruner.shrink()          # the same model object, with smaller layers
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import nn

from pdprune.channel.costs import LayerCost, measure_costs, solve_keep
from pdprune.channel.checkpoint import input_spec
from pdprune.channel.declared import remove_units
from pdprune.channel.groups import find_channel_groups, zero_channels
from pdprune.channel.masking import ChannelHook, ChannelMaskState
from pdprune.channel.report import ChannelLayerReport, ChannelReport
from pdprune.config import PruneConfig
from pdprune.baselines.channel import L1Channel
from pdprune.nn.pruner import MASKS_BYPASSED
from pdprune.nn.selection import default_filter

__all__ = ["ChannelPruner"]

STATE_FORMAT = 1


class ChannelPruner:
    """Learns which output channels to keep, one shared soft mask per coupled group."""

    def __init__(self, model: nn.Module, config: PruneConfig, example_inputs: Any) -> None:
        pattern = config.channels
        assert pattern is not None
        self.model = model
        self.config = config
        keep_module = config.filter_fn or default_filter
        self.example_spec = input_spec(example_inputs)  # fails now, not after training, if it cannot be saved
        self.graph, groups, self.skipped = find_channel_groups(
            model, example_inputs, keep_module, config.exclude, declared=pattern.groups, heads=pattern.heads
        )
        if config.include:
            chosen = [g for g in groups if any(re.search(p, m.name) for p in config.include for m in g.members)]
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
            reasons = "; ".join(f"{k}: {v}" for k, v in list(self.skipped.items())[:6]) or "no Linear or convolution"
            raise ValueError(
                f"{type(model).__name__} has no channel group that can be pruned ({reasons}). Check the "
                f"filter, include and exclude settings, or prune unstructured or N:M instead."
            )
        self.groups = {g.name: g for g in groups}
        self.costs: list[LayerCost] = measure_costs(model, example_inputs, groups)
        self.keep = solve_keep(groups, self.costs, config.sparsity, pattern.unit, pattern.round_to)
        l1 = isinstance(config.method, L1Channel)
        self.states = {g.name: ChannelMaskState(g, self.keep[g.name], pattern.tau, one_shot_l1=l1) for g in groups}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._hooks: list[ChannelHook] = []
        for g in groups:
            for member in g.members:
                hook = ChannelHook(self.states[g.name], member)
                self._hooks.append(hook)
                self._handles += hook.attach(member.module)
        self._checked_calls = False
        self.kept: dict[str, torch.Tensor] | None = None  # per group, fixed by finalize()
        self.step_count = 0
        self.finalized = False
        self.shrunk = False
        self._declared_removals: list[list[Any]] = []
        self._declared_attributes: dict[str, int] = {}
        self._model_params_before = _count(model)
        self._calls_at_last_step = 0
        self._versions_at_last_step = self._versions()
        self._update()

    # ----------------------------------------------------------------- lifecycle
    def step(self) -> None:
        """Advance the schedule by one optimizer step."""
        self._require(finalized=False)
        if not self._checked_calls:
            self._check_producers_called()
        self._check_masks_ran()
        self.step_count += 1
        for state in self.states.values():
            state.epoch += 1
        self._update()
        self._versions_at_last_step = self._versions()

    def finalize(self) -> ChannelReport:
        """Keep exactly the budgeted channels of each group (highest scores), zero the others in
        every producer (weight rows, bias, norm affine) and remove the hooks. Shapes do not change
        until :meth:`shrink`."""
        self._require(finalized=False)
        schedule = self.config.schedule
        if self.step_count < schedule.warmup_steps + schedule.ramp_steps:
            warnings.warn(
                f"finalize() after {self.step_count} steps, before the schedule's ramp ends at step "
                f"{schedule.warmup_steps + schedule.ramp_steps}: channels are cut at the full budget now.",
                stacklevel=2,
            )
        self.kept = self.masks()
        for name, group in self.groups.items():
            zero_channels(group, self.kept[name])
        self.remove()
        self.finalized = True
        return self.report()

    def shrink(self) -> nn.Module:
        """Remove the zeroed channels physically: every coupled layer (convs, norms, Linear, the
        consumers' input channels) gets smaller, in place. Returns the model. Build the optimizer
        anew afterwards: its parameters are replaced."""
        self._require(finalized=True)
        if self.shrunk:
            raise RuntimeError("this model is already shrunk")
        assert self.kept is not None
        regrown = [name for name, group in self.groups.items() if _nonzero_in_pruned(group, self.kept[name])]
        if regrown:
            raise RuntimeError(
                f"channels zeroed by finalize() are no longer zero in {', '.join(regrown[:5])} (training went on after "
                f"finalize()?), so removing them would change the model. Call shrink() right after finalize() and "
                f"fine-tune the shrunk model instead."
            )
        for name, group in self.groups.items():
            pruned = (~self.kept[name]).nonzero().flatten().tolist()
            if pruned and group.origin == "traced":
                self.graph.get_pruning_group(group.root, group.root_fn, pruned).prune()
        modules = dict(self.model.named_modules())
        for name, group in self.groups.items():
            if group.origin != "traced":
                removals, attributes = remove_units(group, (~self.kept[name]).nonzero().flatten().tolist(), modules)
                self._declared_removals += removals
                self._declared_attributes |= attributes
        self.shrunk = True
        return self.model

    def remove(self) -> None:
        """Detach the masks without changing the weights."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ----------------------------------------------------------------- inspection
    def masks(self) -> dict[str, torch.Tensor]:
        """Per group, the boolean channels :meth:`finalize` keeps (or kept)."""
        if self.kept is not None:
            return {k: v.clone() for k, v in self.kept.items()}
        return {name: state.hard_keep().clone() for name, state in self.states.items()}

    def pruning_plan(self) -> list[list[Any]]:
        """The removals :meth:`shrink` made, replayable on a fresh model of the same class
        (see :func:`pdprune.save_shrunk` / :func:`pdprune.load_shrunk`)."""
        self._require(finalized=True)
        if not self.shrunk:
            raise RuntimeError("call shrink() first: the plan records the removals it made")
        return [[name, bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in self.graph.pruning_history()]

    def declared_plan(self) -> dict[str, Any]:
        """The layer-by-layer removals and size attributes of attention heads and declared groups,
        applied after :meth:`pruning_plan`'s (empty when there are none)."""
        self._require(finalized=True)
        if not self.shrunk:
            raise RuntimeError("call shrink() first: the plan records the removals it made")
        return {"removals": [list(r) for r in self._declared_removals], "attributes": dict(self._declared_attributes)}

    def report(self) -> ChannelReport:
        channels = {name: g.channels for name, g in self.groups.items()}
        layers = []
        for cost in self.costs:
            out_f, in_f = cost.fractions(self.keep, channels)
            params, macs = cost.after(self.keep, channels)
            layers.append(ChannelLayerReport(
                cost.name, cost.module_type,
                (cost.out_channels, round(cost.out_channels * out_f)),
                (cost.in_channels, round(cost.in_channels * in_f)),
                (cost.params, params), (cost.macs, macs),
            ))
        removed = sum(c.params - c.after(self.keep, channels)[0] for c in self.costs)
        # Per-channel parameters outside Linear/conv layers (norm affine) go with their channels too.
        removed += sum((g.channels - self.keep[name]) * g.width * len(m.channel_params())
                       for name, g in self.groups.items() for m in g.members if not m.scored)
        return ChannelReport(
            unit=self.config.channels.unit,  # type: ignore[union-attr]
            target_sparsity=self.config.sparsity,
            groups={name: (g.channels, self.keep[name]) for name, g in self.groups.items()},
            group_units={name: (g.unit_name, g.width) for name, g in self.groups.items() if g.width > 1},
            layers=layers,
            skipped=dict(self.skipped),
            model_params=(self._model_params_before, _count(self.model) if self.shrunk else self._model_params_before - removed),
            finalized=self.finalized,
            shrunk=self.shrunk,
            step=self.step_count,
        )

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "kind": "channel", "step": self.step_count, "finalized": self.finalized,
                "fingerprint": self._fingerprint(),
                "fixed": {n: s.fixed.clone() for n, s in self.states.items() if s.fixed is not None}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._require(finalized=False)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("kind") != "channel":
            raise ValueError("not a pdprune channel-pruner checkpoint; pass the dict ChannelPruner.state_dict() returned")
        if state.get("finalized"):
            raise ValueError("this checkpoint was saved after finalize(); there is nothing to resume")
        if state.get("fingerprint") != self._fingerprint():
            raise ValueError("channel-pruner checkpoint was saved for a different model or config; build the same "
                             "model, example inputs and PruneConfig as the run that saved it")
        self.step_count = int(state["step"])
        fixed = state.get("fixed", {})
        for name, s in self.states.items():
            s.epoch += 1
            device = self.groups[name].scored_weights()[0][0].device
            s.fixed = fixed[name].to(device=device, dtype=torch.bool) if name in fixed else None
            if s.fixed is not None and (s.fixed.numel() != self.groups[name].channels or int(s.fixed.sum()) != s.keep):
                raise ValueError(f"the checkpoint's channel choice for {name} does not fit this model's group")
        self._update()

    # ----------------------------------------------------------------- internals
    def _versions(self) -> list[int]:
        return [weight._version for g in self.groups.values() for weight, _ in g.scored_weights()]

    def _check_producers_called(self) -> None:
        """After the first training forward, every producer must have run through its forward():
        one whose weights a parent reads directly (F.linear(x, layer.weight)) never gets its mask."""
        if not any(hook.calls for hook in self._hooks):
            return  # no forward in training mode yet: nothing to judge
        self._checked_calls = True
        never = [f"{hook.member.name} (group {hook.state.group.name})" for hook in self._hooks if hook.calls == 0]
        if never:
            raise RuntimeError(
                f"{len(never)} channel-pruned layer(s) were never called through their forward() during the first "
                f"training step, so their channel masks cannot apply: {', '.join(never[:6])}. A parent module reads "
                f"their weights directly; exclude them (PruneConfig(exclude=[...])) or declare the group without them."
            )

    def _check_masks_ran(self) -> None:
        """Raise if channel masks were in force and the weights were updated, but no producer ran
        its mask since the last step (a compiled graph that bypasses the hooks; see MASKS_BYPASSED)."""
        calls = sum(state.calls for state in self.states.values())
        in_force = any(state.progress > 0.0 for state in self.states.values())
        updated = self._versions() != self._versions_at_last_step
        ran = calls != self._calls_at_last_step
        self._calls_at_last_step = calls
        if in_force and updated and not ran:
            raise RuntimeError(MASKS_BYPASSED.replace("pruned layer", "channel-pruned layer"))

    def _fingerprint(self) -> dict[str, Any]:
        return {"config": self.config.fingerprint(),
                "groups": {n: [g.channels, self.keep[n]] for n, g in self.groups.items()}}

    def _update(self) -> None:
        schedule = self.config.schedule
        progress = self.config.method.progress(schedule, self.step_count)
        sharpness = settle_fraction(self.step_count, schedule.warmup_steps + schedule.ramp_steps, schedule.total_steps,
                                    self.config.channels.settle)  # type: ignore[union-attr]
        for state in self.states.values():
            state.progress = progress
            state.temperature_scale = 1.0 - sharpness

    def _require(self, finalized: bool) -> None:
        if finalized and not self.finalized:
            raise RuntimeError("call finalize() first")
        if not finalized and self.finalized:
            raise RuntimeError("this pruner has been finalized; the model is an ordinary model now")


def settle_fraction(step: int, ramp_end: int, total: int, settle: float = 0.5) -> float:
    """How far the masks have hardened after the ramp: 0 until the ramp ends, then rising linearly
    to 1 after ``settle`` of the remaining steps (the rest trains with exact 0/1 channel masks).

    A channel's output after a BatchNorm does not depend on its weights' scale, so with adaptive
    optimizers the channel norms drift together and sit near the cut, where the soft mask is
    neither 0 nor 1; a network that has learnt to use half-masked channels loses them all at
    hardening. Shrinking the temperature to zero before the end makes hardening a no-op.
    """
    if step <= ramp_end or total <= ramp_end:
        return 0.0 if step <= ramp_end else 1.0
    return min(1.0, (step - ramp_end) / max(1, int((total - ramp_end) * settle)))


def _nonzero_in_pruned(group: Any, keep: torch.Tensor) -> bool:
    keep = group.expand(keep)
    for member in group.members:
        for param_name, dim in member.channel_params():
            parameter = getattr(member.module, param_name).detach()
            dropped = (~member.stacked(keep)).nonzero().flatten().to(parameter.device)
            if bool(parameter.index_select(dim, dropped).ne(0).any()):
                return True
    return False


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

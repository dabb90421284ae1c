"""Weight pruners: unstructured and N:M plug their targets, budgets and hardening into the engine.

pruner = pdprune.prepare(model, config)   # attach soft masks (no-op until warm-up ends)
... loss.backward(); optimizer.step(); pruner.step()
report = pruner.finalize()                # harden, fold masks into weights, detach
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from pdprune.config import NMConfig, UnstructuredConfig, WeightConfig
from pdprune.engine.base import MaskInTraining, Pruner
from pdprune.engine.collective import shared_values
from pdprune.functional import erk_budgets, global_magnitude_budgets, keep_count
from pdprune.patterns.specs import output_units, reduction_dim, reduction_group_size
from pdprune.patterns.weights import (
    WeightHook,
    WeightTarget,
    default_filter,
    select_weights,
    unselected_layer_types,
)
from pdprune.report import LayerReport, PruneReport
from pdprune.schedule import settle_fraction

__all__ = ["NMPruner", "UnstructuredPruner", "WeightPruner"]


class WeightPruner(Pruner[WeightConfig, WeightTarget]):
    """What unstructured and N:M pruning share: one target per weight tensor, masked in forward
    by a :class:`~pdprune.patterns.weights.WeightHook`, hardened by zeroing weights."""

    kind: ClassVar[str] = "weights"

    def __init__(self, model: nn.Module, config: WeightConfig) -> None:
        targets = select_weights(
            model, config.filter_fn or default_filter, config.include, config.exclude, tuple(config.overrides)
        )
        for target in targets:
            override = config.override_for(target.users[0][0])
            if override is not None and (override.tau is not None or override.relative_tau is not None):
                target.tau, target.relative_tau = override.tau, override.relative_tau
            else:
                target.tau, target.relative_tau = config.tau, config.relative_tau
            target.fixed = override.sparsity if override else None
        self._shape_targets(targets, config)
        self._warmup_steps = config.schedule.warmup_steps
        super().__init__(model, config, targets)

    # ----------------------------------------------------------------- public views
    @property
    def tensors(self) -> list[WeightTarget]:
        """The pruned weight tensors, in model order."""
        return list(self.targets.values())

    def current_sparsity(self) -> dict[str, float]:
        """The sparsity in force for each pruned tensor at this step. For N:M during the ramp,
        the fraction of weights below their group's (scaled) threshold, measured now."""
        result = {}
        for name, target in self.targets.items():
            if target.nm is not None and 0.0 < target.progress < 1.0:
                weight = target.parameter.detach()
                result[name] = float((weight.abs().float() < target.nm_threshold(weight)).float().mean())
            else:
                result[name] = target.sparsity
        return result

    def report(self) -> PruneReport:
        self._check_still_attached()
        budgets = self._budgets_for_view()
        measured = self.finalized or self.removed
        layers = []
        for name, target in self.targets.items():
            weight = target.parameter.detach()
            kept = int(weight.count_nonzero()) if measured else keep_count(weight.numel(), budgets[name])
            layers.append(
                LayerReport(
                    name=name,
                    module_type=target.module_type,
                    shape=tuple(weight.shape),
                    params=weight.numel(),
                    target_sparsity=budgets[name],
                    achieved_sparsity=1.0 - kept / weight.numel(),
                    note=_joined(target.note, _starved_note(target, budgets[name])),
                    gain=self.config.method.gain_at_cut(target, self.state[name]),
                )
            )
        total = sum(layer.params for layer in layers)
        # What the budgets give overall: the config's sparsity unless overrides fix layers otherwise.
        target_sparsity = sum(layer.target_sparsity * layer.params for layer in layers) / total
        return PruneReport(
            layers=layers,
            target_sparsity=target_sparsity,
            model_params=self._model_params(),
            finalized=self.finalized,
            step=self.step_count,
            pattern=str(self.config.pattern),
            removed=self.removed,
            unpruned_types=unselected_layer_types(self.model, list(self.targets.values())),
        )

    # ----------------------------------------------------------------- engine hooks
    def _shape_targets(self, targets: list[WeightTarget], config: WeightConfig) -> None:
        """Pattern-specific set-up of the targets (N:M: group axis, indivisible layers)."""

    def _attach(self, target: WeightTarget) -> list[torch.utils.hooks.RemovableHandle]:
        masked = MaskInTraining(self.config.method, target, self.state).weight
        handles = []
        for _, module in target.users:
            handles += WeightHook(target, masked).attach(module)
        return handles

    def _set_in_force(self, target: WeightTarget, progress: float, budget: float | None) -> None:
        if budget is None:
            target.sparsity, target.progress, target.steps_pruning = 0.0, 0.0, 0
            return
        target.sparsity, target.progress = budget * progress, progress
        target.steps_pruning = self.step_count - self._warmup_steps
        schedule, settle = self.config.schedule, self.config.settle
        if settle is not None:
            ramp_end = schedule.warmup_steps + schedule.ramp_steps
            hardened = settle_fraction(self.step_count, ramp_end, schedule.total_steps, settle)
            target.temperature_scale = 1.0 - hardened

    def _in_force(self) -> bool:
        return any(not t.unpruned_now() for t in self.targets.values())

    def _final_mask(self, target: WeightTarget, budget: float) -> torch.Tensor:
        weight = target.parameter.detach()
        return self.config.method.final_weight_mask(weight, target, self.state[target.name], budget)

    def _harden(self, target: WeightTarget, keep: torch.Tensor) -> None:
        # masked_fill, not multiply: pruned weights become +0.0, never -0.0 (which compressed
        # checkpoints would have to store as a value)
        target.parameter.masked_fill_(~keep, 0)

    def _versions(self) -> list[int]:
        return [t.parameter._version for t in self.targets.values()]

    def _never_called(self) -> list[str]:
        return [name for name, t in self.targets.items() if t.calls == 0]

    def _target_fingerprint(self) -> dict[str, Any]:
        return {name: list(t.parameter.shape) for name, t in self.targets.items()}

    def _compute_budgets(self, preview: bool, call: str) -> dict[str, float]:
        meta = [t.name for t in self.targets.values() if t.parameter.is_meta]
        if meta:
            raise ValueError(
                f"{meta[0]} is on the meta device, and pruning needs its values now (step "
                f"{self.step_count}): "
                "materialize the model (model.to_empty(device=...) and load its weights) before pruning "
                "starts, "
                f"or give the schedule a warm-up and materialize it before then"
            )
        names = list(self.targets)
        values = self._budget_values([self.targets[n] for n in names])
        if not preview:
            # Every rank must prune the same layers equally; rank 0's view decides.
            values = shared_values(values, self.targets[names[0]].parameter.device, call)
        budgets = dict(zip(names, values))
        if not preview:
            self._warn_starved(budgets)
        return budgets

    def _warn_starved(self, budgets: dict[str, float]) -> None:
        """Warn once, when the budgets are fixed, about layers left fewer weights than outputs:
        some of their outputs are certain to lose every weight, which can silence a whole network
        (a 288-weight stem convolution at 98% keeps 6 weights for 32 channels)."""
        starved = [
            (n, t) for n, t in self.targets.items() if t.fixed is None and _starved_note(t, budgets[n])
        ]
        if not starved:
            return
        listing = "; ".join(
            f"{name} keeps {keep_count(t.parameter.numel(), budgets[name])} of {t.parameter.numel()} weights "
            f"for {_outputs(t)} outputs"
            for name, t in starved[:4]
        )
        more = f" (and {len(starved) - 4} more)" if len(starved) > 4 else ""
        rule = getattr(self.config, "budget", "")
        why = {
            "uniform": "uniform budgets give small layers the same sparsity as large ones",
            "global": "the global magnitude ranking left these layers almost nothing",
        }.get(rule, "these layers are too small for their budget")
        warnings.warn(
            f"{len(starved)} layer(s) keep fewer weights than they have outputs, so some outputs lose "
            f"every weight and turn constant: {listing}{more}. {why.capitalize()}: budget='erk' keeps "
            f"a share for every layer, overrides={{'{starved[0][1].users[0][0]}': 0.5}} lowers one layer's "
            "sparsity, and exclude=[...] keeps a layer dense",
            stacklevel=_user_stacklevel(),
        )

    def _budget_values(self, targets: list[WeightTarget]) -> list[float]:
        raise NotImplementedError


class UnstructuredPruner(WeightPruner):
    """Unstructured pruning: per-layer budgets from one global magnitude ranking, ERK or uniform."""

    def __init__(self, model: nn.Module, config: UnstructuredConfig) -> None:
        super().__init__(model, config)
        free = [t for t in self.targets.values() if t.fixed is None]
        if not free and config.overrides:
            fixed = sum(t.fixed * t.parameter.numel() for t in self.targets.values())  # type: ignore[operator]
            overall = fixed / sum(t.parameter.numel() for t in self.targets.values())
            warnings.warn(
                f"overrides fix the sparsity of every pruned layer, so sparsity={config.sparsity:g} has no "
                "effect: "
                f"the layers' budgets give {overall:.4f} overall (the report's target says so)",
                stacklevel=3,
            )

    def _budget_values(self, targets: list[WeightTarget]) -> list[float]:
        config = self.config
        fixed = [t.fixed for t in targets]
        if config.budget == "global":
            return global_magnitude_budgets(
                [t.parameter for t in targets], config.sparsity, fixed, [t.name for t in targets]
            )
        if config.budget == "erk":
            return erk_budgets([tuple(t.parameter.shape) for t in targets], config.sparsity, fixed)
        return [config.sparsity if f is None else f for f in fixed]


class NMPruner(WeightPruner):
    """N:M pruning: every layer ends at exactly N of every M along its reduction dimension."""

    def _shape_targets(self, targets: list[WeightTarget], config: NMConfig) -> None:
        nm = config.pattern
        indivisible = {}
        for target in targets:
            module = target.users[0][1]
            dim = reduction_dim(module)
            if dim is None:
                raise ValueError(
                    f"N:M needs each layer's reduction dimension, and {target.name} is a "
                    f"{type(module).__name__}, whose "
                    "layout pdprune does not know (it knows Linear, Conv1d/2d/3d, ConvTranspose and "
                    "transformers' "
                    f"Conv1D); leave it out with exclude=[...] or a filter_fn"
                )
            size = reduction_group_size(module, tuple(target.parameter.shape))
            assert size is not None
            target.nm, target.dim = nm, dim
            if size % nm.m:
                indivisible[target.name] = (dim, size)
        if indivisible and config.indivisible == "error":
            listing = "; ".join(
                f"{name} (size {size} along dim {dim})" for name, (dim, size) in list(indivisible.items())[:8]
            )
            raise ValueError(
                f"pattern {nm} needs each pruned layer's reduction dimension (input features or input "
                "channels per "
                f"group) to be a multiple of {nm.m}, but {len(indivisible)} layer(s) are not: {listing}. "
                "Leave them "
                "out with exclude=[...], or pass indivisible='dense' to keep them dense (the report lists "
                "them)."
            )
        for target in targets:
            if target.name in indivisible:
                dim = indivisible[target.name][0]
                target.nm, target.fixed = None, 0.0
                dense = f"left dense: {nm} needs size along dim {dim} divisible by {nm.m}"
                target.note = f"{dense}; {target.note}" if target.note else dense

    def _budget_values(self, targets: list[WeightTarget]) -> list[float]:
        return [self.config.sparsity if t.fixed is None else t.fixed for t in targets]


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside pdprune, seen from the caller of this
    function: budgets are fixed by ``step()``, ``finalize()`` or a report at varying depths."""
    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _outputs(target: WeightTarget) -> int | None:
    return output_units(target.users[0][1], tuple(target.parameter.shape))


def _starved_note(target: WeightTarget, budget: float) -> str:
    """A report note when ``budget`` keeps fewer of the target's weights than it has outputs."""
    outputs = _outputs(target)
    if outputs is None or target.nm is not None or budget == 0.0:
        return ""
    kept = keep_count(target.parameter.numel(), budget)
    if kept >= outputs:
        return ""
    return f"keeps {kept} weights for {outputs} outputs: at least {outputs - kept} outputs lose every weight"


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)

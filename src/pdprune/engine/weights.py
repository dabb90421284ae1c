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
import torch.distributed as dist
from torch import nn

from pdprune.config import NMConfig, UnstructuredConfig, WeightConfig
from pdprune.engine.base import MaskInTraining, Pruner
from pdprune.engine.collective import distributed, meet, shared_values
from pdprune.functional import erk_budgets, global_magnitude_budgets, keep_count, nm_hard_mask
from pdprune.functional.masks import nonfinite_error
from pdprune.functional.select import top_magnitude_mask
from pdprune.methods.base import Method
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
from pdprune.sharding import Shards, is_sharded, local_part, shards_of

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
        if any(t.nm is not None and 0.0 < t.progress < 1.0 for t in self.targets.values()):
            self._meet_for_shards("current_sparsity()")
        for name, target in self.targets.items():
            if target.nm is not None and 0.0 < target.progress < 1.0:
                weight = target.parameter.detach()
                if is_sharded(weight):  # collective: each rank counts its rows
                    shards, local = shards_of(weight, name), local_part(weight)
                    below = (local.abs().float() < target.nm_threshold(local)).sum().double()
                    result[name] = float(shards.reduce(below.reshape(1), "sum")) / weight.numel()
                    continue
                result[name] = float((weight.abs().float() < target.nm_threshold(weight)).float().mean())
            else:
                result[name] = target.sparsity
        return result

    def report(self) -> PruneReport:
        self._check_still_attached()
        budgets = self._budgets_for_view()
        measured = self.finalized or self.removed
        preview_note = PREVIEW_NOTE if self.budgets is None and self._previews_uniform() else ""
        layers = []
        for name, target in self.targets.items():
            weight = target.parameter.detach()
            kept = self._kept(name, target) if measured else keep_count(weight.numel(), budgets[name])
            layers.append(
                LayerReport(
                    name=name,
                    module_type=target.module_type,
                    shape=tuple(weight.shape),
                    params=weight.numel(),
                    target_sparsity=budgets[name],
                    achieved_sparsity=1.0 - kept / weight.numel(),
                    note=_joined(target.note, _starved_note(target, budgets[name]), preview_note),
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
        if is_sharded(weight):
            return self._final_shard_mask(target, budget)
        return self.config.method.final_weight_mask(weight, target, self.state[target.name], budget)

    def _final_shard_mask(self, target: WeightTarget, budget: float) -> torch.Tensor:
        """This rank's rows of the final mask of a weight FSDP2 shards (collective): the same
        selection as on the whole tensor, from all-reduced histograms and counts."""
        weight = target.parameter.detach()
        shards, local = shards_of(weight, target.name), local_part(weight)
        bad = shards.reduce(torch.tensor([float((~torch.isfinite(local)).sum())], dtype=torch.float64), "sum")
        if bad.item():
            raise nonfinite_error(target.name, int(bad.item()))
        if target.nm is not None:
            rows_per_shard = -(-weight.shape[0] // shards.count)
            if target.dim == 0 and (rows_per_shard % target.nm.m or weight.shape[0] % target.nm.m):
                raise ValueError(
                    f"{target.name}: {target.nm} groups run along dim 0, which FSDP2 splits into "
                    f"{rows_per_shard} rows per rank, so a group would straddle two ranks; shard over a "
                    f"number of ranks that leaves a multiple of {target.nm.m} rows on each, or leave "
                    "the layer out with exclude=[...]"
                )
            return nm_hard_mask(local, target.nm.n, target.nm.m, target.dim, name=target.name)
        keep = keep_count(weight.numel(), budget)
        if keep >= weight.numel():
            return torch.ones_like(local, dtype=torch.bool)
        return top_magnitude_mask(local, keep, shards.reduce, shards.shard)

    def _harden(self, target: WeightTarget, keep: torch.Tensor) -> None:
        # masked_fill, not multiply: pruned weights become +0.0, never -0.0 (which compressed
        # checkpoints would have to store as a value)
        local = local_part(target.parameter)
        local.masked_fill_(~keep, 0)
        if is_sharded(target.parameter):  # counted now, while every rank is here
            count = torch.tensor([float(local.count_nonzero())], dtype=torch.float64)
            target.kept_after_hardening = int(
                shards_of(target.parameter, target.name).reduce(count, "sum").item()
            )

    def _kept(self, name: str, target: WeightTarget) -> int:
        """Nonzero weights after finalize() or remove(); of a sharded weight, the count finalize()
        took (a removed pruner counts its rows on every rank: collective)."""
        weight = target.parameter.detach()
        if not is_sharded(weight):
            return int(weight.count_nonzero())
        if self.finalized and target.kept_after_hardening is not None:
            return target.kept_after_hardening
        count = torch.tensor([float(local_part(weight).count_nonzero())], dtype=torch.float64)
        return int(shards_of(weight, name).reduce(count, "sum").item())

    def _meet_for_shards(self, call: str) -> None:
        if distributed() and any(is_sharded(t.parameter) for t in self.targets.values()):
            meet(call, "which all-reduces over the rows of weights that FSDP2 shards")

    def _previews_uniform(self) -> bool:
        """Whether budgets not fixed yet preview as uniform: a global ranking of sharded weights."""
        return getattr(self.config, "budget", None) == "global" and any(
            is_sharded(t.parameter) for t in self.targets.values()
        )

    def _check_shardable(self) -> None:
        """Under FSDP2, only methods whose final mask is the plain magnitude selection: GMP and
        one-shot keep a whole-layer mask between steps, which is not sharded yet."""
        method = self.config.method
        sharded = [name for name, t in self.targets.items() if is_sharded(t.parameter)]
        if sharded and type(method).final_weight_mask is not Method.final_weight_mask:
            raise ValueError(
                f"{type(method).__name__} keeps a whole mask per layer between steps, and pdprune does not "
                f"shard those masks yet, but FSDP2 shards {sharded[0]}"
                + (f" and {len(sharded) - 1} more" if len(sharded) > 1 else "")
                + ". Under FSDP2 prune with PDP (or SR-STE for N:M); run the baselines under DDP or "
                "on one process."
            )

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
        if not preview:
            self._check_shardable()
        if preview and self._previews_uniform():  # the ranking needs every rank; stay local
            fixed = [self.targets[n].fixed for n in names]
            values = [self.config.sparsity if f is None else f for f in fixed]
        else:
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
            sharded = [t for t in targets if is_sharded(t.parameter)]
            if not sharded:
                weights = [t.parameter for t in targets]
                return global_magnitude_budgets(weights, config.sparsity, fixed, [t.name for t in targets])
            shards = _common_shards(sharded)
            # Rows of sharded weights from each rank; a weight every rank holds whole, from one rank.
            parts = [
                local_part(t.parameter.detach())
                if is_sharded(t.parameter)
                else t.parameter.detach().reshape(-1)[: t.parameter.numel() if shards.index == 0 else 0]
                for t in targets
            ]
            return global_magnitude_budgets(
                parts, config.sparsity, fixed, [t.name for t in targets], reduce=shards.reduce
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


PREVIEW_NOTE = "previewed as uniform: the global ranking of sharded weights is fixed when warm-up ends"


def _common_shards(targets: list[WeightTarget]) -> Shards:
    """The one set of ranks that shards every sharded target (a ranking spans them all)."""
    first = shards_of(targets[0].parameter, targets[0].name)
    for target in targets[1:]:
        other = shards_of(target.parameter, target.name)
        if dist.get_process_group_ranks(other.group) != dist.get_process_group_ranks(first.group):
            raise ValueError(
                f"{targets[0].name} and {target.name} are sharded over different ranks; a global budget "
                "ranks all weights together, so shard every pruned layer over the same mesh, or use "
                "budget='erk' or 'uniform', which need no ranking"
            )
    return first

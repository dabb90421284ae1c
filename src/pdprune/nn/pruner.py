"""The PDP pruner: an optimizer-shaped lifecycle over a model's selected weights.

    pruner = pdprune.prepare(model, config)   # attach soft masks (no-op until warm-up ends)
    ... loss.backward(); optimizer.step(); pruner.step()
    report = pruner.finalize()                # harden, fold masks into weights, detach

State that must survive a restart (step count, per-layer budgets, a fingerprint of the model and
config) is in ``state_dict()``, made of plain Python values so ``torch.load(weights_only=True)``
and JSON can both read it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pdprune.config import PruneConfig
from pdprune.functional import erk_budgets, global_magnitude_budgets, keep_count
from pdprune.nn.masking import MaskState, MaskHook
from pdprune.nn.selection import PrunedTensor, select_tensors
from pdprune.pattern import NM, reduction_dim, reduction_group_size
from pdprune.report import LayerReport, PruneReport

MASKS_BYPASSED = (
    "masks were in force but no pruned layer ran its mask in a training forward since the last "
    "pruner.step(). Either the forward bypassed pdprune's hooks, which happens with torch.compile when "
    "the model (or another instance of its class) was compiled before pdprune.prepare(): compile after "
    "prepare() in a fresh process, or set torch._dynamo.config.skip_nnmodule_hook_guards = False before "
    "compiling; or the weights were updated without a forward in training mode (model.train()) since "
    "the last step: call step() once per optimizer step, after the training forward and backward."
)

__all__ = ["Pruner", "prepare"]

STATE_FORMAT = 1


class Pruner:
    """Learns masks for the selected weights of ``model`` during training (PDP unless the config
    names another method).

    Call :meth:`step` once after every optimizer step and :meth:`finalize` at the end.
    """

    def __init__(self, model: nn.Module, config: PruneConfig) -> None:
        self.model = model
        self.config = config
        self.tensors: list[PrunedTensor] = select_tensors(model, config)
        self.states: dict[str, MaskState] = {}
        self.fixed: dict[str, float | None] = {}
        self.notes: dict[str, str] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        nm = config.nm
        indivisible = _indivisible_layers(self.tensors, nm) if nm is not None else {}
        if indivisible and config.indivisible == "error":
            listing = "; ".join(f"{name} (size {size} along dim {dim})" for name, (dim, size) in list(indivisible.items())[:8])
            raise ValueError(
                f"pattern {nm} needs each pruned layer's reduction dimension (input features or input channels per "
                f"group) to be a multiple of {nm.m}, but {len(indivisible)} layer(s) are not: {listing}. Leave them "
                f"out with exclude=[...], or pass PruneConfig(indivisible='dense') to keep them dense (the report "
                f"lists them)."
            )
        for tensor in self.tensors:
            override = config.override_for(tensor.users[0][0])
            tau = override.tau if override and override.tau is not None else config.tau
            self.fixed[tensor.name] = override.sparsity if override else None
            layer_nm, dim = nm, reduction_dim(tensor.users[0][1]) or 0
            if tensor.name in indivisible:
                layer_nm, self.fixed[tensor.name] = None, 0.0
                self.notes[tensor.name] = f"left dense: {nm} needs size along dim {dim} divisible by {nm.m}"
            state = MaskState(tensor.name, tau, config.method, nm=layer_nm, dim=dim)
            self.states[tensor.name] = state
            for _, module in tensor.users:
                self._handles += MaskHook(state).attach(module)
        self.step_count = 0
        self.budgets: dict[str, float] | None = None
        self.finalized = False
        self._checked_calls = False
        self._calls_at_last_step = 0
        self._versions_at_last_step = [tensor.parameter._version for tensor in self.tensors]
        self._update_sparsity()

    # ----------------------------------------------------------------- lifecycle
    def step(self) -> None:
        """Advance the schedule by one optimizer step and update the sparsity in force."""
        self._require_active()
        if not self._checked_calls:
            self._check_layers_called()
        self._check_masks_ran()
        self.step_count += 1
        if self.step_count == self.config.schedule.total_steps + 1:
            warnings.warn(
                f"step() called more than the schedule's total_steps={self.config.schedule.total_steps} times; "
                f"the masks stay at their budget, but check that total_steps counts optimizer steps.",
                stacklevel=2,
            )
        for state in self.states.values():
            state.epoch += 1
        self._update_sparsity()
        # A method may write the weights itself (one-shot pruning, for one); only updates made
        # between two steps count as training updates.
        self._versions_at_last_step = [tensor.parameter._version for tensor in self.tensors]

    def finalize(self) -> PruneReport:
        """Harden every mask to its budget, fold it into the weights and remove the hooks.

        Afterwards the model is an ordinary model whose pruned weights hold exact zeros. Returns
        the report measured on the hardened weights.
        """
        self._require_active()
        if self.step_count < self.config.schedule.warmup_steps + self.config.schedule.ramp_steps:
            warnings.warn(
                f"finalize() after {self.step_count} steps, before the schedule's ramp ends at step "
                f"{self.config.schedule.warmup_steps + self.config.schedule.ramp_steps}: masks are "
                f"hardened at the full budget now, which the network has not been trained for.",
                stacklevel=2,
            )
        budgets = self._ensure_budgets()
        with torch.no_grad():
            for tensor in self.tensors:
                weight = tensor.parameter
                state = self.states[tensor.name]
                # masked_fill, not multiply: pruned weights become +0.0, never -0.0 (which compressed
                # checkpoints would have to store as a value)
                weight.masked_fill_(~self.config.method.final_mask(weight, state, budgets[tensor.name]), 0)
        self.remove()
        self.finalized = True
        return self.report()

    def remove(self) -> None:
        """Detach the masks without changing the weights (the model becomes dense again)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ----------------------------------------------------------------- inspection
    def current_sparsity(self) -> dict[str, float]:
        """The sparsity in force for each pruned tensor at this step. For N:M during the ramp,
        the fraction of weights below their group's (scaled) threshold, measured now."""
        result = {}
        for tensor in self.tensors:
            state = self.states[tensor.name]
            if state.nm is not None and 0.0 < state.progress < 1.0:
                weight = tensor.parameter.detach()
                result[tensor.name] = float((weight.abs().float() < state.threshold(weight)).float().mean())
            else:
                result[tensor.name] = state.sparsity
        return result

    def masks(self) -> dict[str, torch.Tensor]:
        """Boolean keep-masks each tensor would get if hardened at its final budget now."""
        budgets = self._budgets_for_view()
        method = self.config.method
        return {
            t.name: method.final_mask(t.parameter.detach(), self.states[t.name], budgets[t.name]).clone()
            for t in self.tensors
        }

    def report(self) -> PruneReport:
        """Per-layer and total sparsity. Achieved sparsity is measured on hardened masks: the
        weights' zeros after :meth:`finalize`, the masks :meth:`finalize` would apply before it."""
        budgets = self._budgets_for_view()
        layers = []
        for tensor in self.tensors:
            weight = tensor.parameter.detach()
            kept = int(weight.count_nonzero()) if self.finalized else keep_count(weight.numel(), budgets[tensor.name])
            layers.append(
                LayerReport(
                    name=tensor.name,
                    module_type=type(tensor.users[0][1]).__name__,
                    shape=tuple(weight.shape),
                    params=weight.numel(),
                    target_sparsity=budgets[tensor.name],
                    achieved_sparsity=1.0 - kept / weight.numel(),
                    note=self.notes.get(tensor.name, ""),
                )
            )
        seen: set[int] = set()
        model_params = 0
        for p in self.model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                model_params += p.numel()
        return PruneReport(
            layers=layers,
            target_sparsity=self.config.sparsity,
            model_params=model_params,
            finalized=self.finalized,
            step=self.step_count,
            pattern=str(self.config.pattern),
        )

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The pruner's resumable state, as plain Python values."""
        return {
            "format": STATE_FORMAT,
            "step": self.step_count,
            "finalized": self.finalized,
            "budgets": dict(self.budgets) if self.budgets is not None else None,
            "fingerprint": self._fingerprint(),
            "stored_masks": {
                name: {"mask": s.mask.clone(), "sparsity": s.mask_sparsity}
                for name, s in self.states.items()
                if s.mask is not None
            },
            # Reused thresholds (and the slope their search starts from) decide the next steps'
            # masks, so a resumed run needs them to match the uninterrupted one.
            "reusable_thresholds": {
                name: [float(s.reusable_threshold), s.elasticity]
                for name, s in self.states.items()
                if s.reusable_threshold is not None
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` of a pruner of the same model and config."""
        self._require_active()
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                "not a pdprune pruner checkpoint (missing or unknown 'format'); pass the dict that "
                "Pruner.state_dict() returned."
            )
        if state.get("finalized"):
            raise ValueError("this checkpoint was saved after finalize(); there is nothing to resume")
        mine, theirs = self._fingerprint(), state.get("fingerprint", {})
        if mine != theirs:
            raise ValueError(
                "pruner checkpoint was saved for a different model or config: "
                + _describe_difference(theirs, mine)
                + ". Build the same model and PruneConfig as the run that saved it."
            )
        self.step_count = int(state["step"])
        budgets = state["budgets"]
        self.budgets = {str(k): float(v) for k, v in budgets.items()} if budgets is not None else None
        for name, s in self.states.items():
            s.epoch += 1
            stored = state.get("stored_masks", {}).get(name)
            s.mask = stored["mask"].to(self._parameter(name).device) if stored else None
            s.mask_sparsity = float(stored["sparsity"]) if stored else 0.0
            reusable = state.get("reusable_thresholds", {}).get(name)
            s.reusable_threshold = None
            if reusable is not None:
                device = self._parameter(name).device
                s.reusable_threshold = torch.tensor(float(reusable[0]), dtype=torch.float32, device=device)
                s.elasticity = float(reusable[1])
        self._update_sparsity(apply_method=False)

    # ----------------------------------------------------------------- internals
    def _fingerprint(self) -> dict[str, Any]:
        return {
            "config": self.config.fingerprint(),
            "tensors": {t.name: list(t.parameter.shape) for t in self.tensors},
        }

    def _require_active(self) -> None:
        if self.finalized:
            raise RuntimeError("this pruner has been finalized; the model is an ordinary model now")

    def _ensure_budgets(self) -> dict[str, float]:
        """The per-layer budgets, fixed the first time pruning needs them."""
        if self.budgets is None:
            self.budgets = self._compute_budgets(shared=True)
        return self.budgets

    def _budgets_for_view(self) -> dict[str, float]:
        """Budgets for inspection: the fixed ones, or a preview that fixes nothing during warm-up."""
        return self.budgets if self.budgets is not None else self._compute_budgets(shared=False)

    def _compute_budgets(self, shared: bool) -> dict[str, float]:
        names = [t.name for t in self.tensors]
        fixed = [self.fixed[n] for n in names]
        if self.config.nm is not None:  # every N:M layer keeps N of M; budgets do not apply
            values = [self.config.sparsity if f is None else f for f in fixed]
        elif self.config.budget == "global":
            values = global_magnitude_budgets([t.parameter for t in self.tensors], self.config.sparsity, fixed, names)
        elif self.config.budget == "erk":
            values = erk_budgets([tuple(t.parameter.shape) for t in self.tensors], self.config.sparsity, fixed)
        else:
            values = [self.config.sparsity if f is None else f for f in fixed]
        if shared and dist.is_available() and dist.is_initialized():
            # Every rank must prune the same layers equally; rank 0's view decides.
            device = self.tensors[0].parameter.device
            if dist.get_backend() == "nccl" and device.type != "cuda":
                device = torch.device("cuda", torch.cuda.current_device())
            shared = torch.tensor(values, dtype=torch.float64, device=device)
            dist.broadcast(shared, src=0)
            values = shared.tolist()
        return dict(zip(names, values))

    def _parameter(self, name: str) -> nn.Parameter:
        return next(t.parameter for t in self.tensors if t.name == name)

    def _update_sparsity(self, apply_method: bool = True) -> None:
        """Set each layer's sparsity for the current step, then let the method update its masks
        (not when restoring a checkpoint, whose masks already belong to this step)."""
        schedule = self.config.schedule
        if not schedule.pruning_started(self.step_count):
            return
        budgets = self._ensure_budgets()
        progress = self.config.method.progress(schedule, self.step_count)
        for name, state in self.states.items():
            state.sparsity = budgets[name] * progress
            state.progress = progress
        if apply_method:
            with torch.no_grad():
                for tensor in self.tensors:
                    self.config.method.update(tensor.parameter, self.states[tensor.name], self.step_count, schedule)

    def _check_masks_ran(self) -> None:
        """Raise if masks were in force but no pruned layer ran its mask since the last step.

        The usual cause is a compiled forward that never calls the masking hooks: torch.compile
        does not guard on module hooks by default, so a graph compiled for the model (or another
        instance of its class) before prepare() keeps running without the masks.
        """
        calls = sum(state.calls for state in self.states.values())
        versions = [tensor.parameter._version for tensor in self.tensors]
        in_force = any(state.sparsity > 0.0 for state in self.states.values())
        ran = calls != self._calls_at_last_step
        # Only a step in which the weights were updated counts: step() may also just advance the
        # schedule (no forward, no update), which is allowed.
        updated = versions != self._versions_at_last_step
        self._calls_at_last_step, self._versions_at_last_step = calls, versions
        if in_force and updated and not ran:
            raise RuntimeError(MASKS_BYPASSED)

    def _check_layers_called(self) -> None:
        calls = {name: s.calls for name, s in self.states.items()}
        if not any(calls.values()):
            return  # no forward in training mode yet: nothing to judge
        self._checked_calls = True
        never = [name for name, c in calls.items() if c == 0]
        if never:
            raise RuntimeError(
                f"{len(never)} pruned layer(s) were never called through their forward() during the "
                f"first training step, so their masks cannot apply: {', '.join(never[:8])}. Their "
                f"parent module reads the weight directly; exclude them with "
                f"PruneConfig(exclude=[...]) or pass a filter_fn that skips them."
            )


def prepare(model: nn.Module, config: PruneConfig, example_inputs: Any = None) -> Any:
    """Attach PDP soft masks to the layers of ``model`` that ``config`` selects.

    The model keeps its class, parameters and state_dict keys; masks apply in forward once the
    schedule's warm-up is over. Returns the :class:`Pruner` that drives the schedule, or for
    ``pattern="channel"`` a :class:`pdprune.channel.ChannelPruner`, which needs
    ``example_inputs`` (one batch as the model takes it: a tensor, a tuple of positional
    arguments or a dict of keyword arguments) to trace which channels are coupled.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare() takes an nn.Module, got {type(model).__name__}")
    if not isinstance(config, PruneConfig):
        raise TypeError(f"prepare() takes a PruneConfig, got {type(config).__name__}")
    masked = [name for name, module in model.named_modules() if _has_mask_hook(module)]
    if masked:
        raise RuntimeError(
            f"this model is already prepared for pruning (masks on {', '.join(masked[:5])}); keep "
            f"using its Pruner, or call pruner.remove() (or finalize()) before preparing it again."
        )
    if config.channels is not None:
        if example_inputs is None:
            raise ValueError(
                "channel pruning traces the model to find coupled channels: pass example_inputs=, one "
                "batch as the model takes it (a tensor, a tuple of arguments or a dict of keyword arguments)"
            )
        from pdprune.channel.pruner import ChannelPruner

        return ChannelPruner(model, config, example_inputs)
    if example_inputs is not None:
        raise ValueError("example_inputs is only used by pattern='channel'; leave it out")
    return Pruner(model, config)


def _indivisible_layers(tensors: list[PrunedTensor], nm: NM) -> dict[str, tuple[int, int]]:
    """Layers whose reduction dimension ``nm.m`` does not divide: name -> (dim, size). For a
    grouped transposed conv the size is per conv group, so no group of M straddles two."""
    found = {}
    for tensor in tensors:
        module = tensor.users[0][1]
        dim = reduction_dim(module)
        if dim is None:
            raise ValueError(
                f"N:M needs each layer's reduction dimension, and {tensor.name} is a {type(module).__name__}, "
                f"whose layout pdprune does not know (it knows Linear, Conv1d/2d/3d, ConvTranspose and "
                f"transformers' Conv1D); leave it out with exclude=[...] or a filter_fn"
            )
        size = reduction_group_size(module, tuple(tensor.parameter.shape))
        assert size is not None
        if size % nm.m:
            found[tensor.name] = (dim, size)
    return found


def _has_mask_hook(module: nn.Module) -> bool:
    from pdprune.channel.masking import ChannelHook

    return any(isinstance(getattr(h, "__self__", None), (MaskHook, ChannelHook)) for h in module._forward_pre_hooks.values())


def _describe_difference(saved: dict[str, Any], current: dict[str, Any]) -> str:
    saved_tensors, current_tensors = saved.get("tensors", {}), current.get("tensors", {})
    if saved_tensors != current_tensors:
        missing = sorted(set(saved_tensors) - set(current_tensors))
        extra = sorted(set(current_tensors) - set(saved_tensors))
        reshaped = sorted(n for n in set(saved_tensors) & set(current_tensors) if saved_tensors[n] != current_tensors[n])
        parts = []
        if missing:
            parts.append(f"layers missing here: {', '.join(missing[:5])}")
        if extra:
            parts.append(f"layers not in the checkpoint: {', '.join(extra[:5])}")
        if reshaped:
            parts.append(f"shapes differ for: {', '.join(reshaped[:5])}")
        return "; ".join(parts)
    saved_config, current_config = saved.get("config", {}), current.get("config", {})
    keys = sorted(k for k in set(saved_config) | set(current_config) if saved_config.get(k) != current_config.get(k))
    details = [
        f"{key} (saved {saved_config.get(key)!r}, here {current_config.get(key)!r})"
        if isinstance(saved_config.get(key), dict) or isinstance(current_config.get(key), dict) else key
        for key in keys
    ]
    return f"config differs in {', '.join(details) or 'unknown fields'}"

"""One pruner lifecycle for every pattern: prepare -> step ... step -> finalize (-> shrink / export).

The base class owns the schedule, the step counter, the checks (layers never called, masks
bypassed, layers replaced, all-or-nothing hardening), the hooks and the checkpoint envelope.
A pattern plugs in by subclassing it and filling in the abstract hooks at the bottom: how targets
are found and masked, how budgets are set, how a final mask is applied and reported. What a
masking rule learns per target lives in ``self.state[name]``, created and read by the method.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from pdprune.config import PruneConfig
from pdprune.errors import CheckpointError
from pdprune.integrity import text_digest

__all__ = ["MASKS_BYPASSED", "STATE_FORMAT", "MaskInTraining", "Pruner"]

#: The version of ``Pruner.state_dict()``'s layout; checkpoints of another version are refused,
#: except those of the version before, which had no checksum.
STATE_FORMAT = 3
_STATE_FORMAT_WITHOUT_CHECKSUM = 2

MASKS_BYPASSED = (
    "masks were in force but no pruned layer ran its mask in a training forward since the last "
    "pruner.step(). Either the forward bypassed pdprune's hooks, which happens with torch.compile when "
    "the model (or another instance of its class) was compiled before pdprune.prepare(): compile after "
    "prepare() in a fresh process, or set torch._dynamo.config.skip_nnmodule_hook_guards = False before "
    "compiling; or the weights were updated without a training forward (one in training mode or with "
    "autograd on) since the last step: call step() once per optimizer step, after the forward and "
    "backward."
)

TargetT = TypeVar("TargetT")
ConfigT = TypeVar("ConfigT", bound=PruneConfig)


class MaskInTraining:
    """What a target's hooks call in forward: the method's mask for the target with its state.

    Holds the pruner's state dict (updated in place, never replaced), not the pruner, so hooks
    keep no reference to the model beyond the target's own layers and deepcopy and pickling work.
    """

    def __init__(self, method: Any, target: Any, states: dict[str, Any]) -> None:
        self.method, self.target, self.states = method, target, states

    def weight(self, weight: torch.Tensor) -> torch.Tensor:
        return self.method.mask_weight(weight, self.target, self.states[self.target.name])

    def channels(self) -> torch.Tensor:
        return self.method.mask_channels(self.target, self.states[self.target.name])


class Pruner(Generic[ConfigT, TargetT]):
    """Learns masks for a model's targets during training and hardens them at the end.

    Call :meth:`step` once after every optimizer step and :meth:`finalize` at the end. Under
    torch.distributed, every rank calls :meth:`step` and :meth:`finalize`; the other calls are local.
    """

    #: Names this pruner's checkpoints, so one pattern's state is never loaded into another's.
    kind: ClassVar[str] = "base"
    #: Whether prepare() must pass one batch of example inputs to the constructor (to trace the model).
    needs_example_inputs: ClassVar[bool] = False

    def __init__(self, model: nn.Module, config: ConfigT, targets: list[TargetT]) -> None:
        self.model = model
        self.config = config
        self.targets: dict[str, TargetT] = {t.name: t for t in targets}  # type: ignore[attr-defined]
        method = config.method
        self.state: dict[str, Any] = {name: method.new_state(t) for name, t in self.targets.items()}
        self.budgets: dict[str, float] | None = None
        self.step_count = 0
        self.finalized = False
        self.removed = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for target in self.targets.values():
            self._handles += self._attach(target)
        self._checked_calls = False
        self._calls_at_last_step = 0
        self._versions_at_last_step = self._versions()
        try:
            self._update(after_step=True)
        except BaseException:
            self._detach()  # a prepare() that fails leaves the model as it was
            raise

    # ----------------------------------------------------------------- lifecycle
    def step(self) -> None:
        """Advance the schedule by one optimizer step and update the masks in force."""
        self._require_active("step()")
        self._check_still_attached()
        if not self._checked_calls:
            self._check_layers_called()
        self._check_masks_ran()
        self.step_count += 1
        if self.step_count == self.config.schedule.total_steps + 1:
            warnings.warn(
                f"step() called more than the schedule's total_steps={self.config.schedule.total_steps} "
                "times; "
                f"the masks stay at their budget, but check that total_steps counts optimizer steps.",
                stacklevel=2,
            )
        for target in self.targets.values():
            target.epoch += 1  # type: ignore[attr-defined]
        self._update(after_step=True)
        # A method may write the weights itself (GMP zeroes pruned weights); only updates made
        # between two steps count as training updates.
        self._versions_at_last_step = self._versions()

    def finalize(self) -> Any:
        """Harden every mask to its budget, fold it into the weights and remove the hooks.

        All or nothing: every final mask is computed (and every weight checked) before any
        weight changes. Returns the report measured on the hardened weights.
        """
        self._require_active("finalize()")
        self._check_still_attached()
        schedule = self.config.schedule
        if self.step_count < schedule.warmup_steps + schedule.ramp_steps:
            warnings.warn(
                f"finalize() after {self.step_count} steps, before the schedule's ramp ends at step "
                f"{schedule.warmup_steps + schedule.ramp_steps}: masks are hardened at the full budget now, "
                f"which the network has not been trained for.",
                stacklevel=2,
            )
        budgets = self._ensure_budgets("finalize()")
        self._meet_for_shards("finalize()")
        with torch.no_grad():
            final = {name: self._final_mask(target, budgets[name]) for name, target in self.targets.items()}
            for name, target in self.targets.items():
                self._harden(target, final[name])
        self._detach()
        self.finalized = True
        return self.report()

    def remove(self) -> None:
        """Detach the masks without changing the weights: the model is dense again, and this
        pruner is done (step() and finalize() refuse; report() says it was removed)."""
        self._detach()
        if not self.finalized:
            self.removed = True

    # ----------------------------------------------------------------- inspection
    def masks(self) -> dict[str, torch.Tensor]:
        """The boolean keep-masks :meth:`finalize` would apply now (per target)."""
        self._check_still_attached()
        budgets = self._budgets_for_view()
        self._meet_for_shards("masks()")
        with torch.no_grad():
            return {name: self._final_mask(t, budgets[name]).clone() for name, t in self.targets.items()}

    def report(self) -> Any:
        """What pruning does or did, per layer: measured on the weights after :meth:`finalize` or
        :meth:`remove`, on the masks :meth:`finalize` would apply before."""
        raise NotImplementedError

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The pruner's resumable state as JSON-ready values (``json.dumps`` and
        ``torch.load(weights_only=True)`` both read it): step, budgets, each method's state."""
        method = self.config.method
        body = {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "step": self.step_count,
            "finalized": self.finalized,
            "budgets": dict(self.budgets) if self.budgets is not None else None,
            "fingerprint": self._fingerprint(),
            "method_state": {name: method.state_dict(self.state[name]) for name in self.targets},
        }
        return {**body, "checksum": _state_digest(body)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` of a pruner of the same model and config.

        Everything is checked before anything changes, so a refused checkpoint leaves this
        pruner as it was; the refusal is a :class:`pdprune.CheckpointError` saying why.
        """
        self._require_active("load_state_dict()")
        try:
            self._restore(state)
        except CheckpointError:
            raise
        except (
            ValueError,
            TypeError,
            KeyError,
            AttributeError,
            IndexError,
            OverflowError,
            RuntimeError,
        ) as error:
            raise CheckpointError(None, "pruner state", str(error).strip("'\"")) from None

    def _restore(self, state: dict[str, Any]) -> None:
        if isinstance(state, dict) and state.get("format") == STATE_FORMAT:
            body = {k: v for k, v in state.items() if k != "checksum"}
            if state.get("checksum") != _state_digest(body):
                raise CheckpointError(
                    None, "pruner state", "its checksum does not match its content (corrupt or edited)",
                    "the dict pruner.state_dict() returned, unchanged",
                )  # fmt: skip
        elif isinstance(state, dict) and state.get("format") == _STATE_FORMAT_WITHOUT_CHECKSUM:
            if "checksum" in state:  # a newer state whose format was damaged: its checksum still counts
                raise CheckpointError(
                    None,
                    "pruner state",
                    f"format {_STATE_FORMAT_WITHOUT_CHECKSUM} beside a checksum",
                    f"{STATE_FORMAT}",
                )
            warnings.warn(
                "this pruner state was saved by an earlier pdprune, without a checksum: corruption cannot be "
                "detected",
                UserWarning,
                stacklevel=4,
            )
        if (
            not isinstance(state, dict)
            or state.get("format") not in (STATE_FORMAT, _STATE_FORMAT_WITHOUT_CHECKSUM)
            or state.get("kind") != self.kind
        ):
            raise ValueError(
                f"not a pdprune {self.kind} pruner checkpoint of format {STATE_FORMAT}; pass the dict that "
                f"pruner.state_dict() returned (a checkpoint of another pattern or version does not load)"
            )
        missing = [
            k for k in ("step", "finalized", "budgets", "fingerprint", "method_state") if k not in state
        ]
        if missing:
            raise ValueError(f"pruner checkpoint is incomplete: it has no {', '.join(missing)}")
        if state["finalized"]:
            raise ValueError("this checkpoint was saved after finalize(); there is nothing to resume")
        mine, theirs = self._fingerprint(), state["fingerprint"]
        if mine != theirs:
            raise ValueError(
                "pruner checkpoint was saved for a different model or config: "
                + _describe_difference(theirs if isinstance(theirs, dict) else {}, mine)
                + ". Build the same model and config as the run that saved it."
            )
        step = state["step"]
        total = self.config.schedule.total_steps
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total:
            raise ValueError(
                f"pruner checkpoint is at step {step!r}, outside this schedule's 0..{total} steps"
            )
        budgets = _checked_budgets(state["budgets"], list(self.targets))
        saved_states = state["method_state"]
        if not isinstance(saved_states, dict) or set(saved_states) != set(self.targets):
            raise ValueError("pruner checkpoint's method state does not list this pruner's targets")
        method = self.config.method
        loaded = {
            name: method.load_state_dict(target, saved_states[name]) for name, target in self.targets.items()
        }
        self.step_count, self.budgets = step, budgets
        self.state.update(loaded)  # in place: the hooks hold this dict
        for target in self.targets.values():
            target.epoch += 1  # type: ignore[attr-defined]
        self._update(after_step=False)
        self._versions_at_last_step = self._versions()

    # ----------------------------------------------------------------- shared internals
    def _update(self, after_step: bool) -> None:
        """Put the schedule's state for the current step on every target, then let the method
        update its state (not when restoring a checkpoint, whose state already belongs to this step)."""
        schedule = self.config.schedule
        progress = self.config.method.progress(schedule, self.step_count)
        budgets = self._ensure_budgets("step()") if progress > 0.0 else None
        for name, target in self.targets.items():
            self._set_in_force(target, progress, budgets[name] if budgets is not None else None)
        if after_step:
            with torch.no_grad():
                for name, target in self.targets.items():
                    self.config.method.after_step(target, self.state[name])

    def _ensure_budgets(self, call: str) -> dict[str, float]:
        """The per-target budgets, fixed the first time pruning needs them (a collective call)."""
        if self.budgets is None:
            self.budgets = self._compute_budgets(preview=False, call=call)
        return self.budgets

    def _budgets_for_view(self) -> dict[str, float]:
        """The fixed budgets, or a local preview that fixes nothing during warm-up."""
        return self.budgets if self.budgets is not None else self._compute_budgets(preview=True, call="")

    def _require_active(self, call: str) -> None:
        if self.finalized:
            raise RuntimeError(f"{call}: this pruner has been finalized; the model is an ordinary model now")
        if self.removed:
            raise RuntimeError(
                f"{call}: pruner.remove() detached the masks and the model is dense again; call "
                f"pdprune.prepare() again to prune it"
            )

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _check_still_attached(self) -> None:
        if self.finalized or self.removed:
            return  # the model is the user's again
        for target in self.targets.values():
            why = target.swapped_out(self.model)  # type: ignore[attr-defined]
            if why is not None:
                raise RuntimeError(
                    f"{why}, so the pruner no longer masks what the model computes with. Replace layers "
                    "before "
                    f"pdprune.prepare(), or call pruner.remove() and prepare the changed model again."
                )

    def _check_layers_called(self) -> None:
        """After the first training forward, every pruned layer must have run its forward(): one
        whose weight a parent reads directly (F.linear(x, layer.weight)) never gets its mask."""
        if not self._calls():
            return  # no forward in training mode yet: nothing to judge
        self._checked_calls = True
        never = self._never_called()
        if never:
            raise RuntimeError(
                f"{len(never)} pruned layer(s) were never called through their forward() during the first "
                "training "
                f"step, so their masks cannot apply: {', '.join(never[:8])}. Their parent module reads the "
                "weight "
                f"directly; exclude them with exclude=[...] or pass a filter_fn that skips them."
            )

    def _check_masks_ran(self) -> None:
        """Raise if masks were in force and the weights were updated, but no pruned layer ran its
        mask since the last step (a compiled graph that bypasses the hooks; see MASKS_BYPASSED).
        A step() with no update in between only advances the schedule, which is allowed."""
        calls, versions = self._calls(), self._versions()
        ran, updated = calls != self._calls_at_last_step, versions != self._versions_at_last_step
        self._calls_at_last_step, self._versions_at_last_step = calls, versions
        if self._in_force() and updated and not ran:
            raise RuntimeError(MASKS_BYPASSED)

    def _calls(self) -> int:
        return sum(t.calls for t in self.targets.values())  # type: ignore[attr-defined]

    def _fingerprint(self) -> dict[str, Any]:
        return {"config": self.config.fingerprint(), "targets": self._target_fingerprint()}

    def _model_params(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())

    # ----------------------------------------------------------------- what a pattern fills in
    def _attach(self, target: TargetT) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks that make the target's modules compute with the method's mask."""
        raise NotImplementedError

    def _meet_for_shards(self, call: str) -> None:
        """Before a call that all-reduces over weights FSDP2 shards: every rank must be there."""

    def _compute_budgets(self, preview: bool, call: str) -> dict[str, float]:
        """Per-target budgets; ``preview`` for inspection only (no collective)."""
        raise NotImplementedError

    def _set_in_force(self, target: TargetT, progress: float, budget: float | None) -> None:
        """Put the schedule's ``progress`` (and the target's budget, once pruning started) on it."""
        raise NotImplementedError

    def _in_force(self) -> bool:
        raise NotImplementedError

    def _final_mask(self, target: TargetT, budget: float) -> torch.Tensor:
        """The boolean mask hardening applies (raises, before anything changes, on NaN weights)."""
        raise NotImplementedError

    def _harden(self, target: TargetT, keep: torch.Tensor) -> None:
        raise NotImplementedError

    def _versions(self) -> list[int]:
        """Version counters of the weights that training updates."""
        raise NotImplementedError

    def _never_called(self) -> list[str]:
        raise NotImplementedError

    def _target_fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[TargetT]:
        return iter(self.targets.values())


def _checked_budgets(value: Any, names: list[str]) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(names):
        raise ValueError("pruner checkpoint's budgets do not list this pruner's targets")
    budgets = {}
    for name in names:
        budget = value[name]
        if (
            isinstance(budget, bool)
            or not isinstance(budget, (int, float))
            or not math.isfinite(budget)
            or budget < 0
        ):
            raise ValueError(f"pruner checkpoint's budget for {name} is not a valid number: {budget!r}")
        budgets[name] = float(budget)
    return budgets


def _describe_difference(saved: dict[str, Any], current: dict[str, Any]) -> str:
    saved_targets, current_targets = saved.get("targets", {}), current.get("targets", {})
    if saved_targets != current_targets and isinstance(saved_targets, dict):
        missing = sorted(set(saved_targets) - set(current_targets))
        extra = sorted(set(current_targets) - set(saved_targets))
        reshaped = sorted(
            n for n in set(saved_targets) & set(current_targets) if saved_targets[n] != current_targets[n]
        )
        parts = []
        if missing:
            parts.append(f"layers missing here: {', '.join(missing[:5])}")
        if extra:
            parts.append(f"layers not in the checkpoint: {', '.join(extra[:5])}")
        if reshaped:
            parts.append(f"shapes differ for: {', '.join(reshaped[:5])}")
        return "; ".join(parts)
    saved_config, current_config = saved.get("config", {}), current.get("config", {})
    if not isinstance(saved_config, dict):
        return "its settings are unreadable"
    keys = sorted(
        k for k in set(saved_config) | set(current_config) if saved_config.get(k) != current_config.get(k)
    )
    details = [f"{key} (saved {saved_config.get(key)!r}, here {current_config.get(key)!r})" for key in keys]
    return f"config differs in {', '.join(details) or 'unknown fields'}"


def _state_digest(body: dict[str, Any]) -> str | None:
    """SHA-256 of a pruner state's canonical JSON (NaN and infinities written as JSON extensions),
    or None when it holds values JSON cannot write, which then never match a saved checksum."""
    import json

    try:
        return text_digest(json.dumps(body, sort_keys=True, separators=(",", ":")))
    except (TypeError, ValueError):
        return None

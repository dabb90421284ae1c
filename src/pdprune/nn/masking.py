"""Applying a mask in forward without changing the model's parameters or state_dict keys.

A forward pre-hook swaps the module's ``weight`` for the masked weight (m(w) * w for PDP) for the duration of its forward and
a forward hook (always called, even on error) puts the Parameter back. The stored weights stay
dense, ``state_dict`` keys stay the original ones, ``isinstance`` still holds, and the hooks hold
no reference to the model, so ``copy.deepcopy`` and pickling work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pdprune.functional import (
    check_finite,
    hard_mask,
    keep_count,
    midpoint_threshold,
    nm_hard_mask,
    nm_threshold,
    threshold_by_counts,
)
from pdprune.kernels import kernels_for
from pdprune.method import MaskMethod
from pdprune.pattern import NM

__all__ = ["MaskState", "MaskHook"]


class MaskState:
    """The mutable pruning state of one weight tensor, shared by all modules that use it."""

    def __init__(self, name: str, tau: float, method: MaskMethod, nm: NM | None = None, dim: int = 1) -> None:
        self.name = name
        self.tau = tau
        self.method = method
        self.nm = nm  # N:M pattern along weight dimension ``dim``, or None for unstructured
        self.dim = dim
        self.progress = 0.0  # fraction of the ramp done (N:M ramps its thresholds by it)
        self.mask: torch.Tensor | None = None  # for methods that store a binary mask
        self.mask_sparsity = 0.0  # the sparsity ``mask`` was computed at
        self.sparsity = 0.0  # in force now; 0 means no mask at all
        self.calls = 0  # forward calls seen in training mode, to detect layers never called
        self._cached: tuple[tuple[int, int, int, float], torch.Tensor] | None = None
        self._last_threshold: float | None = None  # a search hint only: results never depend on it
        # The last exactly computed t, reused while its kept count is within the method's tolerance.
        self.reusable_threshold: torch.Tensor | None = None
        self.threshold_computed = 0  # exact computations of t (unstructured layers)
        self.threshold_reused = 0  # steps that reused t after its count was checked
        self.threshold_searched = 0  # steps that moved t by counts alone (no selection)
        self.elasticity = 0.4  # relative change of the kept fraction per relative change of t
        # Largest |kept - target| / min(target, numel - target) of a t not selected exactly.
        self.max_reuse_deviation = 0.0
        self._cached_hard: tuple[tuple[int, int, int, float], torch.Tensor] | None = None
        self.epoch = 0  # bumped every optimizer step: thresholds are never reused across steps

    # Under torch.compile the threshold runs eagerly (a graph break): its cache and the search hint
    # are Python state, which would otherwise recompile the graph at every step.
    @torch.compiler.disable
    def threshold(self, weight: torch.Tensor) -> torch.Tensor:
        """t for ``weight`` at the sparsity in force, reused while the weight is unchanged.

        Unstructured: one scalar at the ramped sparsity. N:M: each group's midpoint between its
        N-th and (N+1)-th largest magnitude, scaled by the ramp's progress, so the cut grows
        smoothly from nothing to exactly N of M instead of jumping there at once.
        """
        key = (id(weight), weight._version, self.epoch, self.sparsity)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        if self.nm is None:
            t = self._threshold_within_tolerance(weight)
            if t is None:
                # Last step's t narrows the search on CPU; on GPUs reading it back would stall the
                # device every step, so they run the plain top-k.
                hint = self._last_threshold if weight.device.type == "cpu" else None
                kernels = kernels_for(weight, getattr(self.method, "kernels", "auto")) if hint is not None else None
                t = midpoint_threshold(weight, self.sparsity, name=self.name, hint=hint, kernels=kernels)
                if weight.device.type == "cpu":
                    self._last_threshold = float(t)
                self.threshold_computed += 1
                self.reusable_threshold = t
        else:
            t = nm_threshold(weight, self.nm.n, self.nm.m, self.dim, name=self.name) * self.progress
        self._cached = (key, t)
        return t

    def _threshold_within_tolerance(self, weight: torch.Tensor) -> torch.Tensor | None:
        """A t whose kept count is within the method's tolerance of the target, without a selection.

        The last t is reused if its count (one pass) is still within tolerance; otherwise a few
        secant steps on counts look for one near the middle of the tolerance. None when the
        tolerance is 0, there is no earlier t, or the steps do not get there: t is selected exactly.
        """
        tolerance = getattr(self.method, "threshold_tolerance", 0.0)
        t = self.reusable_threshold
        if tolerance <= 0.0 or t is None or t.device != weight.device:
            return None
        n = weight.numel()
        target = keep_count(n, self.sparsity)
        if target >= n:
            return None
        # Relative to the smaller side of the cut: at 99% sparsity the bound is a fraction of the
        # 1% kept, never a share of the whole tensor that could exceed them.
        allowed = tolerance * min(target, n - target)
        kernels = kernels_for(weight, getattr(self.method, "kernels", "auto"))
        kept, finite = kernels.count(weight, t)
        if not finite:
            check_finite(weight, self.name)
        if abs(kept - target) <= allowed:
            self.threshold_reused += 1
            self._record_deviation(kept, target, n)
            return t
        found = threshold_by_counts(lambda c: kernels.count(weight, c)[0], n, target, allowed / 4,
                                    (t, kept), self.elasticity)
        if found is None:
            return None
        t, kept, self.elasticity = found
        self.threshold_searched += 1
        self._record_deviation(kept, target, n)
        self.reusable_threshold = t
        return t

    def _record_deviation(self, kept: int, target: int, n: int) -> None:
        self.max_reuse_deviation = max(self.max_reuse_deviation, abs(kept - target) / min(target, n - target))

    @torch.compiler.disable
    def current_hard_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """The hard mask at the sparsity in force, reused while the weight is unchanged."""
        key = (id(weight), weight._version, self.epoch, self.sparsity)
        if self._cached_hard is not None and self._cached_hard[0] == key:
            return self._cached_hard[1]
        keep = self.hard_mask(weight, self.sparsity)
        self._cached_hard = (key, keep)
        return keep

    def hard_mask(self, weight: torch.Tensor, sparsity: float) -> torch.Tensor:
        """Boolean keep-mask at ``sparsity``: exactly N of every M for an N:M layer."""
        if self.nm is None or sparsity == 0.0:
            return hard_mask(weight, sparsity, self.name)
        if abs(sparsity - self.nm.sparsity) > 1e-9:
            raise ValueError(f"{self.name} is pruned {self.nm}: it hardens at {self.nm.sparsity:g} only, not {sparsity:g}")
        return nm_hard_mask(weight, self.nm.n, self.nm.m, self.dim, name=self.name)

    def masked(self, weight: torch.Tensor) -> torch.Tensor:
        return self.method.masked_weight(weight, self)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cached"] = None
        state["_cached_hard"] = None
        return state


class MaskHook:
    """Forward pre-hook and post-hook pair that computes a module with its masked weight."""

    def __init__(self, state: MaskState, attribute: str = "weight") -> None:
        self.state = state
        self.attribute = attribute
        self._stash: list[nn.Parameter] = []

    def before(self, module: nn.Module, args: Any) -> None:
        if not self._enter(module.training):
            return
        parameter = module._parameters[self.attribute]
        self._stash.append(parameter)  # type: ignore[arg-type]
        module._parameters[self.attribute] = self.state.masked(parameter)  # type: ignore[assignment]

    # Bookkeeping in plain Python, kept out of torch.compile graphs: a call counter and a sparsity
    # that grows every ramp step would otherwise be guarded on and recompile the graph each step.
    @torch.compiler.disable
    def _enter(self, training: bool) -> bool:
        """Count a training call; True when a mask is in force."""
        if training:
            self.state.calls += 1
        return self.state.sparsity != 0.0

    def after(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stash:
            module._parameters[self.attribute] = self._stash.pop()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stash"] = []
        return state

    def attach(self, module: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        return [
            module.register_forward_pre_hook(self.before),
            module.register_forward_hook(self.after, always_call=True),
        ]

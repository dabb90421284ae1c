"""PDP: Parameter-free Differentiable Pruning (Cho et al., NeurIPS 2023).

Weights compute as sigmoid((w^2 - t^2) / tau) * w with t the midpoint between the smallest kept and
the largest pruned magnitude, taken from the current weights (one t per tensor, or one per group
of M for N:M); channels as the same sigmoid of their squared norms against the cut between the
kept and removed units. No parameters are added; the state kept per target is only a cache of t
and the hints that make finding it cheap.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from pdprune.functional import (
    channel_cut,
    channel_keep,
    channel_soft_mask,
    check_finite,
    keep_count,
    midpoint_threshold,
    relative_temperature,
    soft_masked_weight,
    threshold_by_counts,
)
from pdprune.kernels import KERNEL_CHOICES, KernelChoice, kernels_for
from pdprune.methods.base import Method
from pdprune.patterns.channels import ChannelTarget
from pdprune.patterns.specs import NM, Channels, Pattern, Unstructured
from pdprune.patterns.weights import WeightTarget

__all__ = ["PDP", "PDPChannelState", "PDPWeightState"]


@dataclass
class PDPWeightState:
    """PDP's per-tensor state: the t of this step, last step's t as a search hint, and the last
    exactly selected t with the counters of how often it was reused."""

    cached: tuple[tuple[Any, ...], torch.Tensor] | None = None
    relative_temperature: torch.Tensor | None = None  # relative_tau's tau, fixed when pruning starts
    hint: float | None = None  # a search hint only: results never depend on it
    reusable: torch.Tensor | None = None  # the last exact t, reused while its kept count is within tolerance
    elasticity: float = 0.4  # relative change of the kept fraction per relative change of t
    computed: int = 0  # exact selections of t
    reused: int = 0  # steps that reused t after its count was checked
    searched: int = 0  # steps that moved t by counts alone (no selection)
    max_deviation: float = (
        0.0  # largest |kept - target| / min(target, numel - target) of a t not selected exactly
    )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cached": None}


@dataclass
class PDPChannelState:
    """PDP's per-group state: the cut t^2 of this step."""

    cached: tuple[tuple[Any, ...], torch.Tensor] | None = field(default=None)

    def __getstate__(self) -> dict[str, Any]:
        return {"cached": None}


@dataclass(frozen=True)
class PDP(Method):
    """Parameter-free Differentiable Pruning, for unstructured, N:M and channel pruning.

    The temperature is a setting of the config (``relative_tau`` or ``tau``, and ``settle``, for
    weights; ``Channels(tau=..., settle=...)`` for channels), as it depends on the layers' scale
    rather than on the rule.

    Args:
        threshold_tolerance: a tensor's t is reused from an earlier step while the number of
            weights it keeps (|w| > t) stays within this fraction of the target count (of the
            pruned count, if fewer are pruned than kept); a count (one pass over the weights)
            checks it before every use, and when it strays t is moved by a few secant steps on
            counts, or selected exactly if they fail. The default 0 selects t exactly at every
            step, as the paper does; 1e-2 makes large layers' steps markedly cheaper on CPU (see
            the step-cost benchmark). Hardening is always exact. Unstructured pruning only.
        kernels: how the mask's elementwise work runs: "auto" (fused by torch.compile for layers
            of 2^18 weights or more, when the compiler works on the device), "fused" (always, an
            error if the compiler fails) or "eager". Same results up to float rounding. Weight
            pruning only.
    """

    name: ClassVar[str] = "pdp"
    patterns: ClassVar[frozenset[type]] = frozenset({Unstructured, NM, Channels})

    threshold_tolerance: float = 0.0
    kernels: KernelChoice = "auto"

    def __post_init__(self) -> None:
        tolerance = self.threshold_tolerance
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, numbers.Real)
            or not 0.0 <= float(tolerance) < 0.5
        ):
            raise ValueError(
                f"threshold_tolerance must be a number in [0, 0.5), got {tolerance!r}: it is the fraction "
                f"of a layer's kept (or pruned, if fewer) weights allowed on the other side of the cut while "
                f"t is reused (0, the default, selects t exactly at every step; 1e-2 is a usual value)."
            )
        object.__setattr__(self, "threshold_tolerance", float(self.threshold_tolerance))
        if self.kernels not in KERNEL_CHOICES:
            raise ValueError(
                f"kernels must be one of {', '.join(map(repr, KERNEL_CHOICES))}, got {self.kernels!r}"
            )

    def check(self, pattern: Pattern) -> None:
        if self.threshold_tolerance and not isinstance(pattern, Unstructured):
            raise ValueError(
                f"PDP(threshold_tolerance=...) applies to unstructured pruning only (t is per tensor there); "
                f"pattern {pattern} takes t per group exactly: leave threshold_tolerance out"
            )
        if self.kernels != "auto" and isinstance(pattern, Channels):
            raise ValueError(
                "PDP(kernels=...) applies to weight masks only; channel masks have no kernels to choose: "
                "leave kernels out"
            )

    def new_state(self, target: Any) -> PDPWeightState | PDPChannelState:
        return PDPChannelState() if isinstance(target, ChannelTarget) else PDPWeightState()

    # ----------------------------------------------------------- weights
    def mask_weight(self, weight: torch.Tensor, target: WeightTarget, state: PDPWeightState) -> torch.Tensor:
        t = self.threshold(weight, target, state)
        tau = self._temperature_now(target, state)
        if tau is None:
            # Settled: the exact 0/1 mask of the sparsity in force, so hardening changes nothing;
            # kept weights get their plain gradient.
            return weight * (weight.detach().abs().float() > t).to(weight.dtype)
        return soft_masked_weight(weight, t, tau, kernels_for(weight, self.kernels))

    # Outside torch.compile graphs, like the threshold: the settling scale changes at every step
    # and would otherwise recompile the graph each time; as a tensor it is a graph input instead.
    @torch.compiler.disable
    def _temperature_now(self, target: WeightTarget, state: PDPWeightState) -> torch.Tensor | float | None:
        """tau in force this step (shrunk while the masks settle), or None once they have settled."""
        scale = target.temperature_scale
        if scale <= 0.0:
            return None
        tau = self.temperature(target, state)
        if scale >= 1.0:
            return tau
        return torch.as_tensor(tau, dtype=torch.float32, device=target.parameter.device) * scale

    @staticmethod
    @torch.compiler.disable
    def temperature(target: WeightTarget, state: PDPWeightState) -> torch.Tensor | float:
        """The target's tau before settling: its fixed ``tau``, or ``relative_tau`` times its mean
        squared weight, measured the first time a mask is in force and kept from then on."""
        if target.tau is not None:
            return target.tau
        if state.relative_temperature is None:
            assert target.relative_tau is not None
            state.relative_temperature = relative_temperature(target.parameter, target.relative_tau)
        return state.relative_temperature

    def gain_at_cut(self, target: WeightTarget, state: PDPWeightState) -> float | None:
        """t^2 / (2 tau) at the last threshold in force (before settling): how much PDP's gradient
        amplifies a weight at the cut, where m = 1/2. None before any mask was in force."""
        if state.cached is None:
            return None
        squared = float((state.cached[1].detach().float() ** 2).mean())
        return squared / (2.0 * float(self.temperature(target, state)))

    # Under torch.compile the threshold runs eagerly (a graph break): its cache and the search hint
    # are Python state, which would otherwise recompile the graph at every step.
    @torch.compiler.disable
    def threshold(self, weight: torch.Tensor, target: WeightTarget, state: PDPWeightState) -> torch.Tensor:
        """t for ``weight`` at the sparsity in force, computed once per step and weight version."""
        key = (id(weight), weight._version, target.epoch, target.sparsity)
        if state.cached is not None and state.cached[0] == key:
            return state.cached[1]
        if target.nm is not None:
            t = target.nm_threshold(weight)
        else:
            t = self._threshold_within_tolerance(weight, target, state)
            if t is None:
                # Last step's t narrows the search on CPU; on GPUs reading it back would stall the
                # device every step, so they run the plain top-k.
                hint = state.hint if weight.device.type == "cpu" else None
                kernels = kernels_for(weight, self.kernels) if hint is not None else None
                t = midpoint_threshold(weight, target.sparsity, name=target.name, hint=hint, kernels=kernels)
                if weight.device.type == "cpu":
                    state.hint = float(t)
                state.computed += 1
                state.reusable = t
        state.cached = (key, t)
        return t

    def _threshold_within_tolerance(
        self, weight: torch.Tensor, target: WeightTarget, state: PDPWeightState
    ) -> torch.Tensor | None:
        """A t whose kept count is within the tolerance of the target, without a selection.

        The last t is reused if its count (one pass) is still within tolerance; otherwise a few
        secant steps on counts look for one near the middle of the tolerance. None when the
        tolerance is 0, there is no earlier t, or the steps do not get there: t is selected exactly.
        """
        t = state.reusable
        if self.threshold_tolerance <= 0.0 or t is None or t.device != weight.device:
            return None
        n = weight.numel()
        wanted = keep_count(n, target.sparsity)
        if wanted >= n:
            return None
        # Relative to the smaller side of the cut: at 99% sparsity the bound is a fraction of the
        # 1% kept, never a share of the whole tensor that could exceed them.
        allowed = self.threshold_tolerance * min(wanted, n - wanted)
        kernels = kernels_for(weight, self.kernels)
        kept, finite = kernels.count(weight, t)
        if not finite:
            check_finite(weight, target.name)
        if abs(kept - wanted) <= allowed:
            state.reused += 1
            state.max_deviation = max(state.max_deviation, abs(kept - wanted) / min(wanted, n - wanted))
            return t
        found = threshold_by_counts(
            lambda c: kernels.count(weight, c)[0], n, wanted, allowed / 4, (t, kept), state.elasticity
        )
        if found is None:
            return None
        t, kept, state.elasticity = found
        state.searched += 1
        state.max_deviation = max(state.max_deviation, abs(kept - wanted) / min(wanted, n - wanted))
        state.reusable = t
        return t

    # ----------------------------------------------------------- channels
    def mask_channels(self, target: ChannelTarget, state: PDPChannelState) -> torch.Tensor:
        keep_now = target.keep_now()
        if keep_now == target.units:
            return torch.ones(target.units, device=target.device)
        if target.sharded():  # in a forward: the group's weights must all be gathered here
            raise ValueError(target.split_across_units_error())
        if target.temperature_scale <= 0.0:
            return channel_keep(self._checked_scores(target), keep_now).float()
        live = target.scores(detach=False)
        key = (target.epoch, keep_now, *((id(w), w._version) for w, _ in target.score_weights()))
        if state.cached is None or state.cached[0] != key:
            self._checked_scores(target)
            state.cached = (key, channel_cut(live, keep_now))
        return channel_soft_mask(live, keep_now, target.tau * target.temperature_scale, cut=state.cached[1])

    def final_channels(self, target: ChannelTarget, state: PDPChannelState) -> torch.Tensor:
        return channel_keep(self._checked_scores(target), target.keep)

    @staticmethod
    def _checked_scores(target: ChannelTarget) -> torch.Tensor:
        target.check_finite()
        return target.scores()

    # ----------------------------------------------------------- checkpoints
    def fingerprint(self) -> dict[str, Any]:
        # The kernels change speed only (a run may resume on a machine without a compiler).
        return {"name": self.name, "threshold_tolerance": self.threshold_tolerance}

    def state_dict(self, state: Any) -> dict[str, Any]:
        # A reused t (and the slope its search starts from) decides the next steps' masks, and a
        # relative temperature was measured on weights that have moved since: a resumed run needs
        # both to match the uninterrupted one.
        saved: dict[str, Any] = {}
        if isinstance(state, PDPWeightState) and state.reusable is not None:
            saved |= {"reusable_threshold": float(state.reusable), "elasticity": state.elasticity}
        if isinstance(state, PDPWeightState) and state.relative_temperature is not None:
            saved["relative_temperature"] = float(state.relative_temperature)
        return saved

    def load_state_dict(self, target: Any, saved: dict[str, Any]) -> Any:
        state = self.new_state(target)
        if not isinstance(state, PDPWeightState):
            return state
        device = target.parameter.device
        try:
            if "reusable_threshold" in saved:
                t, elasticity = float(saved["reusable_threshold"]), float(saved["elasticity"])
                state.reusable = torch.tensor(t, dtype=torch.float32, device=device)
                state.elasticity = elasticity
            if "relative_temperature" in saved:
                tau = float(saved["relative_temperature"])
                if not (tau > 0.0 and tau != float("inf")):
                    raise ValueError
                state.relative_temperature = torch.tensor(tau, dtype=torch.float32, device=device)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"the checkpoint's PDP state for {target.name} is malformed") from None
        return state

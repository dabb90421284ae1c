"""The methods an accuracy benchmark compares, each with the pruning schedule its paper uses.

Every method shares warm-up length, ramp length, per-layer budgets, optimizer, learning-rate
schedule, epochs and seeds; only the masking rule and the ramp's shape (linear for PDP as in the
paper, cubic for GMP as in Zhu & Gupta) differ. One-shot cuts the whole budget when warm-up ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from pdprune import (
    DEFAULT_RELATIVE_TAU,
    DEFAULT_TAU,
    DEFAULT_WEIGHT_SETTLE,
    NM,
    PDP,
    Channels,
    PruneConfig,
    Schedule,
)
from pdprune.baselines import GMP, SRSTE, L1Channel, OneShot
from pdprune.functional import soft_masked_weight
from pdprune.kernels import kernels_for

__all__ = [
    "BUDGETS",
    "CHANNEL_RAMP",
    "METHODS",
    "BlendSettlePDP",
    "MethodSpec",
    "PruningSetup",
    "nm_sparsity",
]

RampShape = Literal["linear", "cubic"]


class BlendSettlePDP(PDP):
    """PDP whose masks settle by blending, not by cooling: while they settle the layer computes
    (1 - h) * soft + h * hard with the temperature unchanged, so the gradient gain at the cut
    never exceeds the ramp's, where shrinking tau to 0 makes it grow without bound."""

    def mask_weight(self, weight, target, state):  # type: ignore[no-untyped-def]
        scale = target.temperature_scale
        if scale <= 0.0 or scale >= 1.0:
            return super().mask_weight(weight, target, state)
        t = self.threshold(weight, target, state)
        hard = weight * (weight.detach().abs().float() > t).to(weight.dtype)
        soft = soft_masked_weight(
            weight, t, self.temperature(target, state), kernels_for(weight, self.kernels)
        )
        return scale * soft + (1.0 - scale) * hard


BUDGETS = ("global", "erk", "uniform")  # PruneConfig(budget=...) rules for unstructured runs

# The harness's ramp for channel pruning runs (a fraction of the steps), the library's default
# too: on Fashion-MNIST at half the FLOPs (10 seeds) 20% beat 50% on SmallResNet (81.49% vs
# 81.11%) and SmallMobileNetV2 (82.33% vs 81.47%), and 10% on SmallMobileNetV2 (82.10%);
# results/accuracy/accuracy_cpu-2core-fmnist-channel-ramp0{1,2}*-10seeds.md.
CHANNEL_RAMP = 0.2


def nm_sparsity(pattern: str) -> float:
    """The sparsity of an N:M pattern written as "N:M" (2:4 -> 0.5)."""
    n, m = (int(part) for part in pattern.split(":"))
    return NM(n, m).sparsity


@dataclass(frozen=True)
class PruningSetup:
    """The budget-side settings every method in one comparison shares."""

    warmup: float = 0.1
    ramp: float = 0.5
    budget: str = "global"
    tau: float | None = None  # PDP's absolute temperature (the paper's units), or None:
    relative_tau: float | None = None  # a fraction of t^2 (None and None: the library's default)
    channel_tau: float = Channels().tau  # relative to t^2 (channel scores have no fixed scale)
    channel_settle: float = Channels().settle  # fraction of the steps after the ramp spent hardening
    channel_ramp: float | None = (
        CHANNEL_RAMP  # ramp of channel pruning runs (PDP and L1-norm alike); None: ``ramp``
    )
    gmp_refreshes: int = GMP().refreshes  # mask refreshes over the ramp (the library's default)

    ramp_shape: RampShape | None = None  # one ramp shape for every method, or None: each its own
    settle: float | None = DEFAULT_WEIGHT_SETTLE  # PDP weight masks harden over this much after the ramp

    def temperature(self) -> dict[str, float | None]:
        """The PruneConfig settings of the weight masks' temperature this setup asks for."""
        chosen = {"tau": self.tau, "relative_tau": self.relative_tau}
        return {k: v for k, v in chosen.items() if v is not None} | {"settle": self.settle}

    def temperature_text(self) -> str:
        if self.tau is not None:
            return f"tau {self.tau:g} (absolute)" + (
                "" if self.settle is None else f", settle {self.settle:g}"
            )
        from pdprune import DEFAULT_RELATIVE_TAU

        relative = self.relative_tau if self.relative_tau is not None else DEFAULT_RELATIVE_TAU
        settle = (
            "soft until hardening"
            if self.settle is None
            else f"hardened over the first {self.settle:.0%} of the steps after the ramp"
        )
        return f"tau {relative:g} of the mean squared weight at the start (relative), {settle}"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    shape: RampShape
    make: Callable[[PruningSetup, int], Any]  # (setup, ramp steps) -> a pdprune method
    unstructured: bool = True
    nm: bool = False
    channel: bool = False
    temperature: dict[str, float] | None = None  # PruneConfig temperature replacing the setup's

    def config(
        self,
        sparsity: float,
        total_steps: int,
        setup: PruningSetup,
        filter_fn: Callable[[nn.Module, str], bool] | None = None,
        pattern: str | None = None,
    ) -> PruneConfig:
        """The method's config; with an N:M ``pattern``, layers it cannot divide stay dense (the
        stem's single input channel, depthwise convolutions) and the report lists them. Pattern
        "channel" removes ``sparsity`` of the model's FLOPs by whole channels of every group,
        "channel/expansion" of the groups that pass through a depthwise convolution only."""
        channel = pattern is not None and pattern.startswith("channel")
        ramp = setup.channel_ramp if channel and setup.channel_ramp is not None else setup.ramp
        shape = setup.ramp_shape or self.shape
        schedule = Schedule(total_steps=total_steps, warmup=setup.warmup, ramp=ramp, shape=shape)
        common = {
            "schedule": schedule,
            "filter_fn": filter_fn,
            "method": self.make(setup, schedule.ramp_steps),
        }
        # Each pattern gets only the settings that apply to it: channels carry their own tau, N:M
        # sets every layer's share itself (no budget rule) and may leave indivisible layers dense.
        if channel:
            scope = "expansion" if pattern == "channel/expansion" else "all"
            channels = Channels(unit="flops", tau=setup.channel_tau, settle=setup.channel_settle, scope=scope)
            return PruneConfig(sparsity=sparsity, pattern=channels, **common)
        temperature = self.temperature if self.temperature is not None else setup.temperature()
        if pattern is not None:
            return PruneConfig(pattern=pattern, indivisible="dense", **temperature, **common)
        return PruneConfig(sparsity=sparsity, budget=setup.budget, **temperature, **common)  # type: ignore[arg-type]


METHODS: dict[str, MethodSpec] = {
    "pdp": MethodSpec("pdp", "linear", lambda setup, ramp: PDP(), nm=True, channel=True),
    # PDP as the paper runs it and as the library did before relative_tau and settle: a fixed
    # temperature and soft masks until hardening. Compared with "pdp" it measures the new defaults.
    "pdp-tau1e-4": MethodSpec(
        "pdp-tau1e-4",
        "linear",
        lambda setup, ramp: PDP(),
        nm=True,
        temperature={"tau": DEFAULT_TAU, "settle": None},
    ),
    # The new relative temperature without settling: compared with "pdp" and "pdp-tau1e-4" it tells
    # which of the two changes a result comes from.
    "pdp-nosettle": MethodSpec(
        "pdp-nosettle",
        "linear",
        lambda setup, ramp: PDP(),
        nm=True,
        temperature={"relative_tau": DEFAULT_RELATIVE_TAU, "settle": None},
    ),
    # Settling by blending soft into hard masks at a fixed temperature (see BlendSettlePDP):
    # compared with "pdp" it tells whether the gain growing as tau cools is what settling costs.
    "pdp-blend": MethodSpec("pdp-blend", "linear", lambda setup, ramp: BlendSettlePDP()),
    # PDP with t reused within a 1% count tolerance (the default selects t exactly at every step);
    # compared with "pdp" it measures what the tolerance costs in accuracy.
    "pdp-tol": MethodSpec("pdp-tol", "linear", lambda setup, ramp: PDP(threshold_tolerance=1e-2)),
    "gmp": MethodSpec("gmp", "cubic", lambda setup, ramp: GMP(refreshes=setup.gmp_refreshes)),
    "oneshot": MethodSpec("oneshot", "linear", lambda setup, ramp: OneShot(), nm=True),
    "srste": MethodSpec("srste", "linear", lambda setup, ramp: SRSTE(), unstructured=False, nm=True),
    "l1channel": MethodSpec(
        "l1channel", "linear", lambda setup, ramp: L1Channel(), unstructured=False, channel=True
    ),
}

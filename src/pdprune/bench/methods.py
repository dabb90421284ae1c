"""The methods an accuracy benchmark compares, each with the pruning schedule its paper uses.

Every method shares warm-up length, ramp length, per-layer budgets, optimizer, learning-rate
schedule, epochs and seeds; only the masking rule and the ramp's shape (linear for PDP as in the
paper, cubic for GMP as in Zhu & Gupta) differ. One-shot cuts the whole budget when warm-up ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pdprune.baselines import GMP, SRSTE, L1Channel, OneShot
from pdprune.pattern import Channels
from pdprune.config import DEFAULT_TAU, PruneConfig
from pdprune.method import PDP, MaskMethod
from pdprune.schedule import CHANNEL_RAMP, RampShape, Schedule

__all__ = ["METHODS", "MethodSpec", "PruningSetup"]


@dataclass(frozen=True)
class PruningSetup:
    """The budget-side settings every method in one comparison shares."""

    warmup: float = 0.1
    ramp: float = 0.5
    budget: str = "global"
    tau: float = DEFAULT_TAU
    channel_tau: float = Channels().tau  # relative to t^2 (channel scores have no fixed scale)
    channel_settle: float = Channels().settle  # fraction of the steps after the ramp spent hardening
    channel_ramp: float | None = CHANNEL_RAMP  # ramp of channel pruning runs (PDP and L1-norm alike); None: ``ramp``
    gmp_refreshes: int = 10  # mask refreshes over the ramp


@dataclass(frozen=True)
class MethodSpec:
    name: str
    shape: RampShape
    make: Callable[[PruningSetup, int], MaskMethod]
    unstructured: bool = True
    nm: bool = False
    channel: bool = False

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
        schedule = Schedule(total_steps=total_steps, warmup=setup.warmup, ramp=ramp, shape=self.shape)
        return PruneConfig(
            sparsity=None if pattern and not channel else sparsity,
            schedule=schedule,
            tau=setup.tau,
            budget=setup.budget,  # type: ignore[arg-type]
            filter_fn=filter_fn,
            method=self.make(setup, schedule.ramp_steps),
            pattern=Channels(unit="flops", tau=setup.channel_tau, settle=setup.channel_settle,
                             scope="expansion" if pattern == "channel/expansion" else "all")
            if channel else (pattern or "unstructured"),
            indivisible="dense",
        )


METHODS: dict[str, MethodSpec] = {
    "pdp": MethodSpec("pdp", "linear", lambda setup, ramp: PDP(), nm=True, channel=True),
    # PDP with t reused within a 1% count tolerance (the default selects t exactly at every step);
    # compared with "pdp" it measures what the tolerance costs in accuracy.
    "pdp-tol": MethodSpec("pdp-tol", "linear", lambda setup, ramp: PDP(threshold_tolerance=1e-2)),
    "gmp": MethodSpec("gmp", "cubic", lambda setup, ramp: GMP(refresh_every=max(1, ramp // setup.gmp_refreshes))),
    "oneshot": MethodSpec("oneshot", "linear", lambda setup, ramp: OneShot(), nm=True),
    "srste": MethodSpec("srste", "linear", lambda setup, ramp: SRSTE(), unstructured=False, nm=True),
    "l1channel": MethodSpec("l1channel", "linear", lambda setup, ramp: L1Channel(), unstructured=False, channel=True),
}

"""What to prune and how hard: frozen, validated configuration objects."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from torch import nn

from pdprune.functional import check_sparsity, check_tau
from pdprune.method import PDP, MaskMethod
from pdprune.pattern import NM, Channels, parse_pattern
from pdprune.schedule import Schedule

__all__ = ["DEFAULT_TAU", "LayerOverride", "PruneConfig"]

#: Mask temperature in units of squared weights. On the small-CNN reference (DESIGN.md) 1e-4 beat
#: a scale-aware 0.05 * t^2 at 90% and 95% sparsity. The accuracy benchmark (SmallResNet, ERK,
#: 3 seeds; benchmarks/results/accuracy_cpu-2core-fmnist-tau*.md) gives at 98% / 99%: 1e-5 69.2 / 52.7,
#: 1e-4 69.2 / 54.7, 1e-3 30.0 / 15.1. So 1e-4 stays (1e-5 ties, 1e-3 is far too soft).
DEFAULT_TAU = 1e-4

Budget = Literal["global", "erk", "uniform"]
BUDGETS: tuple[str, ...] = ("global", "erk", "uniform")
ModuleFilter = Callable[[nn.Module, str], bool]


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer settings that replace the config's for layers whose name matches a regex."""

    sparsity: float | None = None
    tau: float | None = None

    def __post_init__(self) -> None:
        if self.sparsity is not None:
            object.__setattr__(self, "sparsity", check_sparsity(self.sparsity, "LayerOverride.sparsity"))
        if self.tau is not None:
            object.__setattr__(self, "tau", check_tau(self.tau, "LayerOverride.tau"))


@dataclass(frozen=True)
class PruneConfig:
    """A PDP pruning run: the target, the temperature, the schedule and which layers take part.

    Args:
        sparsity: fraction of the selected weights removed at the end, in [0, 1). With an N:M
            pattern it follows from the pattern (2:4 is 0.5) and may be left out.
        schedule: warm-up and ramp lengths (see :class:`pdprune.Schedule`). Required.
        pattern: "unstructured" (default) or "N:M" such as "2:4" / :class:`pdprune.NM`: keep N of
            every M consecutive weights along each layer's reduction dimension (input features;
            input channels at a fixed output channel and kernel position). Budgets do not apply:
            every layer ends at N of M.
        indivisible: for N:M, what to do with a layer whose reduction dimension M does not
            divide: "error" (default) or "dense", which leaves it unpruned and says so in the
            report.
        tau: soft-mask temperature in units of squared weights.
        budget: how the overall sparsity is split over layers, fixed when pruning starts.
            "global" ranks all selected weights by magnitude and gives each layer the fraction of
            its weights below the global cut (at extreme sparsity it can leave small layers a
            single weight); "erk" sizes layers by shape, Erdős-Rényi-Kernel, keeping small and
            thin layers denser; "uniform" gives every layer ``sparsity`` (what fine-tuned
            transformers usually get).
        filter_fn: ``(module, fqn) -> bool`` choosing the modules whose ``weight`` is pruned.
            Default: Linear, Conv1d/2d/3d and ConvTranspose1d/2d/3d.
        include / exclude: regexes searched in module names (``re.search``); a module is pruned
            if the filter accepts it, it matches some ``include`` (when given) and no ``exclude``.
        overrides: regex -> :class:`LayerOverride` (or a bare sparsity); the first match wins.
            Overridden sparsities are fixed; under "global" the rest share the remaining budget
            so the overall sparsity is still ``sparsity``.
        method: the masking rule; :class:`pdprune.PDP` by default, or a baseline from
            :mod:`pdprune.baselines` run under the same schedule and budgets.
    """

    sparsity: float | None = None
    schedule: Schedule | None = None  # type: ignore[assignment]
    tau: float = DEFAULT_TAU
    budget: Budget = "global"
    filter_fn: ModuleFilter | None = None
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    overrides: Mapping[str, LayerOverride | float] = field(default_factory=dict)
    method: MaskMethod = field(default_factory=PDP)
    pattern: str | NM | Channels = "unstructured"
    indivisible: Literal["error", "dense"] = "error"

    def __post_init__(self) -> None:
        parsed = parse_pattern(self.pattern)
        object.__setattr__(self, "pattern", parsed if parsed is not None else "unstructured")
        nm = parsed if isinstance(parsed, NM) else None
        if nm is None and self.sparsity is None:
            raise ValueError("PruneConfig needs a sparsity (e.g. sparsity=0.9) or an N:M pattern (e.g. pattern='2:4')")
        if nm is not None and self.sparsity is not None and abs(check_sparsity(self.sparsity) - nm.sparsity) > 1e-9:
            raise ValueError(
                f"pattern {nm} removes {nm.sparsity:g} of every group, but sparsity={self.sparsity!r} was given; "
                f"leave sparsity out with an N:M pattern (or set it to {nm.sparsity:g})"
            )
        object.__setattr__(self, "sparsity", check_sparsity(nm.sparsity if nm is not None else self.sparsity))
        object.__setattr__(self, "tau", check_tau(self.tau))
        if not isinstance(self.method, MaskMethod):
            raise TypeError(
                f"method must be a pdprune.MaskMethod such as pdprune.PDP() or pdprune.baselines.GMP(), "
                f"got {type(self.method).__name__}"
            )
        if self.indivisible not in ("error", "dense"):
            raise ValueError(f"indivisible must be 'error' or 'dense', got {self.indivisible!r}")
        if nm is not None and not self.method.supports_nm:
            raise ValueError(
                f"{type(self.method).__name__} has no N:M form; use pdprune.PDP(), "
                f"pdprune.baselines.OneShot() or pdprune.baselines.SRSTE() with pattern {nm}"
            )
        if isinstance(parsed, Channels) and not self.method.supports_channels:
            raise ValueError(f"{type(self.method).__name__} has no channel form; use pdprune.PDP() with pattern='channel'")
        if parsed is None and not self.method.supports_unstructured:
            raise ValueError(f"{type(self.method).__name__} is an N:M method; give pattern='2:4' (or another N:M)")
        if not isinstance(self.schedule, Schedule):
            raise TypeError(
                f"schedule must be a pdprune.Schedule (e.g. schedule=pdprune.Schedule(total_steps=...)), "
                f"got {type(self.schedule).__name__}"
            )
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(map(repr, BUDGETS))}, got {self.budget!r}")
        if parsed is not None and self.budget != "global":
            raise ValueError(
                f"budget={self.budget!r} splits an unstructured sparsity over layers; pattern {parsed} sets each "
                f"layer's share itself, so leave budget out"
            )
        for what in ("include", "exclude"):
            patterns = getattr(self, what)
            if isinstance(patterns, str):
                object.__setattr__(self, what, (patterns,))
            object.__setattr__(self, what, tuple(getattr(self, what)))
            for pattern in getattr(self, what):
                _compile(pattern, what)
        normalised: dict[str, LayerOverride] = {}
        for pattern, value in dict(self.overrides).items():
            _compile(pattern, "overrides")
            normalised[pattern] = value if isinstance(value, LayerOverride) else LayerOverride(sparsity=value)
            if parsed is not None and normalised[pattern].sparsity is not None:
                raise ValueError(
                    f"override {pattern!r} sets a sparsity, but per-layer sparsities apply to unstructured pruning "
                    f"only (pattern {parsed}); use exclude=[...] to leave layers out"
                )
        object.__setattr__(self, "overrides", MappingProxyType(normalised))

    @property
    def nm(self) -> NM | None:
        """The N:M pattern, or None."""
        return self.pattern if isinstance(self.pattern, NM) else None

    @property
    def channels(self) -> Channels | None:
        """The channel pattern, or None."""
        return self.pattern if isinstance(self.pattern, Channels) else None

    def override_for(self, name: str) -> LayerOverride | None:
        """The first override whose regex is found in ``name``, if any."""
        for pattern, override in self.overrides.items():
            if re.search(pattern, name):
                return override
        return None

    def fingerprint(self) -> dict[str, Any]:
        """The settings that must match when a pruner's checkpoint is loaded (JSON-friendly)."""
        return {
            "sparsity": self.sparsity,
            "tau": self.tau,
            "budget": self.budget,
            "schedule": {
                "total_steps": self.schedule.total_steps,
                "warmup_steps": self.schedule.warmup_steps,
                "ramp_steps": self.schedule.ramp_steps,
                "shape": self.schedule.shape,
            },
            "overrides": {p: [o.sparsity, o.tau] for p, o in self.overrides.items()},
            "method": self.method.fingerprint(),
            # Only when set, so checkpoints saved before N:M existed still match.
            **({"pattern": str(self.pattern), "indivisible": self.indivisible} if self.nm is not None else {}),
            **({"pattern": _channel_fingerprint(self.channels)} if self.channels is not None else {}),
        }


def _channel_fingerprint(channels: Channels) -> dict[str, Any]:
    """The channel pattern's settings; heads, scope, settle and declared groups only where they differ from the
    defaults, so checkpoints saved before those options existed still match."""
    settings = asdict(channels)
    if settings["heads"] is True:
        del settings["heads"]
    if settings["scope"] == "all":
        del settings["scope"]
    if settings["settle"] == 0.5:
        del settings["settle"]
    if not settings["groups"]:
        del settings["groups"]
    else:
        settings["groups"] = [{**g, "producers": list(g["producers"]), "consumers": list(g["consumers"])}
                              for g in settings["groups"]]
    return settings


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f"{what} pattern {pattern!r} is not a valid regular expression: {error}") from None

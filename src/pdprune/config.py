"""What to prune and how hard: one frozen, validated config class per pattern.

``PruneConfig(...)`` builds the class for the pattern it names (``UnstructuredConfig``,
``NMConfig`` or ``ChannelConfig``, all subclasses of ``PruneConfig``), and a setting that does not
apply to that pattern is an error naming it. The pruner for each class is found through the
registry in :mod:`pdprune.api`.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from torch import nn

from pdprune.functional import check_sparsity, check_tau
from pdprune.methods import PDP, Method
from pdprune.patterns.specs import NM, Channels, Pattern, Unstructured, parse_pattern
from pdprune.schedule import Schedule

__all__ = [
    "BUDGETS",
    "DEFAULT_RELATIVE_TAU",
    "DEFAULT_TAU",
    "DEFAULT_WEIGHT_SETTLE",
    "ChannelConfig",
    "LayerOverride",
    "NMConfig",
    "PruneConfig",
    "UnstructuredConfig",
    "WeightConfig",
]

#: The paper's temperature, in units of squared weights: ``PruneConfig(tau=DEFAULT_TAU)``.
DEFAULT_TAU = 1e-4
#: The default temperature, as a fraction of each layer's mean squared weight when pruning starts
#: (the gain at the cut is then the same on every layer at a given sparsity). Chosen on
#: fine-tuning and from-scratch runs: docs/how-pdp-works.md, "The temperature".
DEFAULT_RELATIVE_TAU = 0.1
#: The default fraction of the steps after the ramp over which weight masks harden.
DEFAULT_WEIGHT_SETTLE = 0.25

Budget = Literal["global", "erk", "uniform"]
BUDGETS: tuple[str, ...] = ("global", "erk", "uniform")
ModuleFilter = Callable[[nn.Module, str], bool]

#: Pattern type -> the config class for it, filled in as config classes are defined.
CONFIG_FOR_PATTERN: dict[type, type[PruneConfig]] = {}


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer settings that replace the config's for layers whose name matches a regex."""

    sparsity: float | None = None
    tau: float | None = None
    relative_tau: float | None = None

    def __post_init__(self) -> None:
        if self.sparsity is not None:
            object.__setattr__(self, "sparsity", check_sparsity(self.sparsity, "LayerOverride.sparsity"))
        _check_temperatures(self, "LayerOverride.")


def _check_temperatures(settings: Any, prefix: str) -> None:
    """Check ``settings.tau`` and ``settings.relative_tau`` (at most one of them set)."""
    if settings.tau is not None and settings.relative_tau is not None:
        raise ValueError(
            f"give {prefix}tau (absolute, in squared-weight units as in the paper) or "
            f"{prefix}relative_tau (a fraction of each layer's t^2), not both"
        )
    if settings.tau is not None:
        object.__setattr__(settings, "tau", check_tau(settings.tau, f"{prefix}tau"))
    if settings.relative_tau is not None:
        value = check_tau(settings.relative_tau, f"{prefix}relative_tau")
        object.__setattr__(settings, "relative_tau", value)


class _BuildsForPattern(type):
    """Calling ``PruneConfig(...)`` itself builds the subclass for the pattern it names."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is PruneConfig:
            if args:
                raise TypeError(
                    "PruneConfig takes keyword arguments only (sparsity=..., schedule=..., pattern=...)"
                )
            return _build(**kwargs)
        return super().__call__(*args, **kwargs)


@dataclass(frozen=True, kw_only=True)
class PruneConfig(metaclass=_BuildsForPattern):
    """A pruning run: the target, the schedule, the method and which layers take part.

    ``PruneConfig(pattern=...)`` returns the config class of that pattern; the fields below are
    common to all of them. See :class:`UnstructuredConfig`, :class:`NMConfig` and
    :class:`ChannelConfig` for the rest.

    Args:
        sparsity: fraction removed at the end, in [0, 1): of the selected weights, or of the
            channels (params, FLOPs) for channel pruning. An N:M pattern sets it (2:4 is 0.5).
        schedule: warm-up and ramp lengths (see :class:`pdprune.Schedule`). Required.
        pattern: "unstructured" (default), "N:M" such as "2:4" or :class:`pdprune.NM`, or
            "channel" / :class:`pdprune.Channels`.
        method: the masking rule; :class:`pdprune.PDP` by default, or a baseline from
            :mod:`pdprune.baselines` run under the same schedule and budgets.
        filter_fn: ``(module, fqn) -> bool`` choosing the modules whose weights are pruned.
            Default: Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d and transformers' GPT-2 ``Conv1D``.
            A weight tied to another module (an LM head and its input embedding) is masked in every use.
        include / exclude: regexes searched in module names (``re.search``); a module is pruned
            if the filter accepts it, it matches some ``include`` (when given) and no ``exclude``.
    """

    #: The pattern type a subclass configures; declaring it registers the subclass for
    #: PruneConfig(pattern=...).
    pattern_type: ClassVar[type | None] = None

    sparsity: float | None = None
    schedule: Schedule = None  # type: ignore[assignment]
    method: Method = field(default_factory=PDP)
    filter_fn: ModuleFilter | None = None
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "pattern_type" in cls.__dict__:
            CONFIG_FOR_PATTERN[cls.pattern_type] = cls

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, Schedule):
            raise TypeError(
                f"schedule must be a pdprune.Schedule (e.g. schedule=pdprune.Schedule(total_steps=...)), "
                f"got {type(self.schedule).__name__}"
            )
        if not isinstance(self.method, Method):
            raise TypeError(
                f"method must be a pdprune.Method such as pdprune.PDP() or pdprune.baselines.GMP(), "
                f"got {type(self.method).__name__}"
            )
        pattern = self.pattern  # type: ignore[attr-defined]
        if not self.method.supports(pattern):
            labels = {"Unstructured": "unstructured", "NM": "N:M", "Channels": "channel"}
            forms = " and ".join(
                sorted(labels.get(p.__name__, p.__name__) for p in type(self.method).patterns)
            )
            raise ValueError(
                f"{type(self.method).__name__} cannot prune pattern {pattern}: it has {forms} forms only; "
                f"use pdprune.PDP() or a baseline that has"
            )
        self.method.check(pattern)
        if self.filter_fn is not None and not callable(self.filter_fn):
            raise TypeError(
                f"filter_fn must be a callable (module, name) -> bool, got {type(self.filter_fn).__name__}"
            )
        for what in ("include", "exclude"):
            object.__setattr__(self, what, _regexes(getattr(self, what), what))

    def fingerprint(self) -> dict[str, Any]:
        """The settings that must match when a pruner's checkpoint is loaded (JSON-ready)."""
        schedule = self.schedule
        return {
            "pattern": str(self.pattern),  # type: ignore[attr-defined]
            "sparsity": self.sparsity,
            "schedule": [schedule.total_steps, schedule.warmup_steps, schedule.ramp_steps, schedule.shape],
            "method": self.method.fingerprint(),
        }


@dataclass(frozen=True, kw_only=True)
class WeightConfig(PruneConfig):
    """What unstructured and N:M pruning share: a temperature and per-layer overrides.

    Args:
        relative_tau: soft-mask temperature as a fraction of each layer's mean squared weight,
            measured when pruning starts, so that a layer's mask has the same shape whatever the
            scale of its weights: at a given sparsity every layer gets the same gradient gain at
            its cut (t^2 / (2 tau), shown per layer in the report). The default, when neither
            temperature is given, is :data:`DEFAULT_RELATIVE_TAU`.
        tau: the paper's fixed temperature in units of squared weights (1e-4 there,
            :data:`DEFAULT_TAU`); giving it replaces ``relative_tau``. A layer's gain at the cut
            is then large for layers of large weights and small for small ones.
        settle: after the ramp the temperature shrinks linearly to zero over this fraction of the
            remaining steps, and the rest of training runs with the exact 0/1 mask that
            ``finalize()`` applies, so hardening changes nothing the network has not trained
            with. ``None`` keeps the soft mask until ``finalize()``, as the paper does.
        overrides: regex -> :class:`LayerOverride` (or a bare sparsity, unstructured only); the
            first match wins.
    """

    tau: float | None = None
    relative_tau: float | None = None
    settle: float | None = DEFAULT_WEIGHT_SETTLE
    overrides: Mapping[str, LayerOverride | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_temperatures(self, "")
        if self.settle is not None:
            if (
                isinstance(self.settle, bool)
                or not isinstance(self.settle, numbers.Real)
                or not 0 < self.settle <= 1
            ):
                raise ValueError(
                    f"settle is the fraction of the steps after the ramp over which the masks harden: "
                    f"a number in (0, 1], or None to keep them soft until finalize(); got {self.settle!r}"
                )
            object.__setattr__(self, "settle", float(self.settle))
        if self.tau is None and self.relative_tau is None:
            object.__setattr__(self, "relative_tau", DEFAULT_RELATIVE_TAU)
        sparsities = isinstance(self.pattern, Unstructured)  # type: ignore[attr-defined]
        object.__setattr__(self, "overrides", _overrides(self.overrides, sparsities, self.pattern))  # type: ignore[attr-defined]
        super().__post_init__()

    def override_for(self, name: str) -> LayerOverride | None:
        """The first override whose regex is found in ``name``, if any."""
        for regex, override in self.overrides.items():
            if re.search(regex, name):
                return override  # type: ignore[return-value]
        return None

    def fingerprint(self) -> dict[str, Any]:
        overrides = {p: [o.sparsity, o.tau, o.relative_tau] for p, o in self.overrides.items()}  # type: ignore[union-attr]
        return {
            **super().fingerprint(),
            "tau": self.tau,
            "relative_tau": self.relative_tau,
            "settle": self.settle,
            "overrides": overrides,
        }


@dataclass(frozen=True, kw_only=True)
class UnstructuredConfig(WeightConfig):
    """Unstructured pruning: each layer keeps its largest-magnitude weights, as its budget allows.

    Args:
        budget: how ``sparsity`` is split over layers, fixed when pruning starts. "global" ranks
            all selected weights by magnitude and gives each layer the fraction of its weights
            below the global cut (at extreme sparsity it can leave small layers a single weight);
            "erk" sizes layers by shape, Erdős-Rényi-Kernel, keeping small and thin layers
            denser; "uniform" gives every layer ``sparsity`` (what fine-tuned transformers usually get).
        overrides: regex -> :class:`LayerOverride` (or a bare sparsity); the first match wins.
            Overridden sparsities are fixed; under "global" and "erk" the rest share the remaining
            budget so the overall sparsity is still ``sparsity``.
    """

    pattern_type: ClassVar[type] = Unstructured

    pattern: Unstructured = field(default_factory=Unstructured)
    budget: Budget = "global"

    def __post_init__(self) -> None:
        if not isinstance(parse_pattern(self.pattern), Unstructured):
            raise ValueError(f"UnstructuredConfig takes pattern='unstructured' only, got {self.pattern!r}")
        object.__setattr__(self, "pattern", Unstructured())
        if self.sparsity is None:
            raise ValueError(
                "PruneConfig needs a sparsity (e.g. sparsity=0.9) or an N:M pattern (e.g. pattern='2:4')"
            )
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(map(repr, BUDGETS))}, got {self.budget!r}")
        super().__post_init__()

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "budget": self.budget}


@dataclass(frozen=True, kw_only=True)
class NMConfig(WeightConfig):
    """N:M pruning: keep ``pattern.n`` of every ``pattern.m`` consecutive weights along each
    layer's reduction dimension (input features; input channels at a fixed output channel and
    kernel position). Every layer ends at N of M, so there are no budgets.

    Args:
        pattern: the :class:`pdprune.NM` pattern (or "2:4").
        indivisible: what to do with a layer whose reduction dimension M does not divide:
            "error" (default) or "dense", which leaves it unpruned and says so in the report.
        overrides: regex -> :class:`LayerOverride` with a ``tau`` or ``relative_tau`` (sparsities
            are N:M's own).
    """

    pattern_type: ClassVar[type] = NM

    pattern: NM = None  # type: ignore[assignment]
    indivisible: Literal["error", "dense"] = "error"

    def __post_init__(self) -> None:
        parsed = parse_pattern(self.pattern)
        if not isinstance(parsed, NM):
            raise ValueError(
                f"NMConfig needs an N:M pattern such as '2:4' or pdprune.NM(2, 4), got {self.pattern!r}"
            )
        object.__setattr__(self, "pattern", parsed)
        if self.sparsity is not None and abs(check_sparsity(self.sparsity) - parsed.sparsity) > 1e-9:
            raise ValueError(
                f"pattern {parsed} removes {parsed.sparsity:g} of every group, but "
                f"sparsity={self.sparsity!r} was given; "
                f"leave sparsity out with an N:M pattern (or set it to {parsed.sparsity:g})"
            )
        object.__setattr__(self, "sparsity", parsed.sparsity)
        if self.indivisible not in ("error", "dense"):
            raise ValueError(f"indivisible must be 'error' or 'dense', got {self.indivisible!r}")
        super().__post_init__()

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "indivisible": self.indivisible}


@dataclass(frozen=True, kw_only=True)
class ChannelConfig(PruneConfig):
    """Channel pruning: whole output channels (with every layer coupled to them) learn one shared
    mask per group, are zeroed at the end, then removed by ``pruner.shrink()``.

    Args:
        pattern: a :class:`pdprune.Channels` with what ``sparsity`` counts, width rounding, the
            channel temperature, heads, declared groups and scope.
    """

    pattern_type: ClassVar[type] = Channels

    pattern: Channels = field(default_factory=Channels)

    def __post_init__(self) -> None:
        if self.sparsity is None:
            raise ValueError(
                "channel pruning needs a sparsity, e.g. sparsity=0.5 (of the channels, or of the "
                "params or FLOPs with Channels(unit=...))"
            )
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        parsed = parse_pattern(self.pattern)
        if not isinstance(parsed, Channels):
            raise ValueError(
                f"ChannelConfig needs pattern='channel' or a pdprune.Channels, got {self.pattern!r}"
            )
        object.__setattr__(self, "pattern", parsed)
        super().__post_init__()

    def fingerprint(self) -> dict[str, Any]:
        settings = self.pattern
        groups = [
            [g.name, list(g.producers), list(g.consumers), g.units, dict(g.counts)]
            + ([dict(g.stacked), dict(g.repeats)] if g.stacked or g.repeats else [])
            for g in settings.groups
        ]
        return {
            **super().fingerprint(),
            "channels": {
                "unit": settings.unit,
                "round_to": settings.round_to,
                "tau": settings.tau,
                "heads": settings.heads,
                "scope": settings.scope,
                "settle": settings.settle,
                "groups": groups,
            },
        }


_WHERE_INSTEAD = {
    ("tau", Channels): "channel masks take their temperature from Channels(tau=...), relative to t^2",
    ("relative_tau", Channels): "channel masks take their temperature from Channels(tau=...), "
    "relative to t^2 already",
    ("settle", Channels): "channel masks harden over Channels(settle=...)",
    ("budget", Channels): "Channels(unit=...) says what the sparsity counts; groups share one budget",
    ("budget", NM): "every N:M layer keeps N of M, so there is no budget to split",
    ("overrides", Channels): "use exclude=[...] to keep layers whole",
    ("indivisible", Unstructured): "it is an N:M setting",
    ("indivisible", Channels): "it is an N:M setting",
}


def _build(pattern: Any = "unstructured", **settings: Any) -> PruneConfig:
    parsed = pattern if type(pattern) in CONFIG_FOR_PATTERN else parse_pattern(pattern)
    cls = CONFIG_FOR_PATTERN[type(parsed)]
    accepted = {f.name for f in fields(cls)}
    for name in settings:
        if name not in accepted:
            if any(name in {f.name for f in fields(other)} for other in CONFIG_FOR_PATTERN.values()):
                why = _WHERE_INSTEAD.get((name, type(parsed)), "it has no effect there")
                raise ValueError(f"{name}= does not apply to pattern {parsed} ({why}); leave it out")
            raise TypeError(
                f"PruneConfig got an unknown setting {name!r}; settings are: {', '.join(sorted(accepted))}"
            )
    return cls(pattern=parsed, **settings)


def _regexes(value: Any, what: str) -> tuple[str, ...]:
    patterns = (value,) if isinstance(value, str) else value
    try:
        patterns = tuple(patterns)
    except TypeError:
        raise TypeError(
            f"{what} must be a regex string or a list of them, got {type(value).__name__} {value!r}"
        ) from None
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"{what} must be a regex string or a list of them, got an item {pattern!r}")
        _compile(pattern, what)
    return patterns


def _overrides(
    value: Any, sparsity_allowed: bool, pattern: Pattern | None = None
) -> Mapping[str, LayerOverride]:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"overrides must be a dict of regex -> LayerOverride (or a sparsity), got {type(value).__name__}"
        )
    normalised: dict[str, LayerOverride] = {}
    for regex, setting in value.items():
        if not isinstance(regex, str):
            raise TypeError(f"overrides keys are regex strings, got {regex!r}")
        _compile(regex, "overrides")
        normalised[regex] = setting if isinstance(setting, LayerOverride) else LayerOverride(sparsity=setting)
        if not sparsity_allowed and normalised[regex].sparsity is not None:
            raise ValueError(
                f"override {regex!r} sets a sparsity, but per-layer sparsities apply to unstructured pruning "
                f"only (pattern {pattern}); use exclude=[...] to leave layers out"
            )
    return MappingProxyType(normalised)


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f"{what} pattern {pattern!r} is not a valid regular expression: {error}") from None

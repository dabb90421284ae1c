"""What a pruning target looks like: unstructured (any weights), N:M (N kept in every group of M
consecutive weights along a layer's reduction dimension, which sparse tensor cores accelerate) or
channels (whole output channels, removed physically afterwards). Plain frozen values, no state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from pdprune.functional import check_nm

__all__ = [
    "NM",
    "ChannelGroupSpec",
    "Channels",
    "Pattern",
    "Unstructured",
    "is_transformers_conv1d",
    "parse_pattern",
    "reduction_dim",
    "reduction_group_size",
]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class Unstructured:
    """Any weights may go: each layer keeps its largest-magnitude weights, as many as its budget allows."""

    def __str__(self) -> str:
        return "unstructured"


@dataclass(frozen=True)
class NM:
    """Keep ``n`` of every ``m`` consecutive weights along the reduction dimension."""

    n: int
    m: int

    def __post_init__(self) -> None:
        n, m = check_nm(self.n, self.m)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class ChannelGroupSpec:
    """A coupled channel group declared by hand, for couplings tracing cannot see or cannot
    remove faithfully (attention heads split by a reshape, channels routed by index).

    ``producers``: modules whose output channels carry the group (their weight rows, bias and
    per-channel norm parameters are masked, scored and removed). ``consumers``: modules whose
    input channels follow (removed, not masked). ``units``: how many prunable units the channels
    form, each a run of consecutive channels (e.g. the heads of q, k and v); None means every
    channel is a unit. ``counts``: attributes to update after removal, ``"module.attr"`` ->
    ``"units"`` or ``"channels"`` (e.g. ``{"blocks.0.heads": "units"}``), so the module's forward
    sees its new size. ``stacked``: producer -> how many copies of the group's channels its output
    lays end to end (a fused q/k/v projection: 3). ``repeats``: layer -> how many runs of each
    unit's channels it holds side by side (grouped-query attention: the query heads that share one
    key/value head, in ``q_proj`` and ``o_proj``). pdprune checks a declaration by removing a few
    units from a copy of the model and comparing its outputs before it trains with it.
    """

    name: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...] = ()
    units: int | None = None
    counts: Mapping[str, str] = field(default_factory=dict)
    stacked: Mapping[str, int] = field(default_factory=dict)
    repeats: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what in ("producers", "consumers"):
            value = getattr(self, what)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(
                    f"ChannelGroupSpec({what}=...) must be a list of module names, got {value!r}"
                )
            object.__setattr__(self, what, tuple(value))
        if not self.producers:
            raise ValueError(f"ChannelGroupSpec {self.name!r} needs at least one producer module")
        listed = [*self.producers, *self.consumers]
        if len(set(listed)) != len(listed):
            raise ValueError(
                f"ChannelGroupSpec {self.name!r} lists "
                f"{sorted({n for n in listed if listed.count(n) > 1})} more than once"
            )
        if self.units is not None and (
            isinstance(self.units, bool) or not isinstance(self.units, int) or self.units < 1
        ):
            raise ValueError(
                f"ChannelGroupSpec(units=...) must be a positive int or None, got {self.units!r}"
            )
        for path, what in dict(self.counts).items():
            if what not in ("units", "channels") or not isinstance(path, str) or not path:
                raise ValueError(
                    f"ChannelGroupSpec(counts=...) maps 'module.attr' to 'units' or 'channels', got "
                    f"{path!r}: {what!r}"
                )
        object.__setattr__(self, "counts", dict(self.counts))
        for what, allowed in (("stacked", self.producers), ("repeats", listed)):
            value = dict(getattr(self, what))
            for name, times in value.items():
                if name not in allowed or isinstance(times, bool) or not isinstance(times, int) or times < 1:
                    layer = "producer" if what == "stacked" else "listed layer"
                    raise ValueError(
                        f"ChannelGroupSpec({what}=...) maps a {layer} of the group to a positive int, got "
                        f"{name!r}: {times!r}"
                    )
            object.__setattr__(self, what, value)

    def layout(self, name: str) -> tuple[int, int]:
        """(stacked copies, side-by-side runs per unit) of the group's channels in layer ``name``."""
        return self.stacked.get(name, 1), self.repeats.get(name, 1)

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                self.producers,
                self.consumers,
                self.units,
                tuple(sorted(self.counts.items())),
                tuple(sorted(self.stacked.items())),
                tuple(sorted(self.repeats.items())),
            )
        )


@dataclass(frozen=True)
class Channels:
    """Prune whole output channels (with every layer coupled to them), then remove them.

    ``unit``: what the sparsity counts, "channels" (default), "params" or "flops" of the
    prunable layers. ``round_to``: kept widths are multiples of this (e.g. 8 for tensor cores).
    ``tau``: the soft mask's temperature relative to t^2, since channel scores (sums of squared
    weights over whole channels) differ in scale by orders of magnitude between layers; the
    default was chosen on the accuracy benchmark (docs/benchmarks.md). After the ramp it shrinks
    to zero over the first ``settle`` fraction of the remaining steps (default half), so hardening
    changes nothing and the rest trains with exact 0/1 masks.
    ``heads``: prune the attention heads of Hugging Face BERT-family models and of
    ``nn.MultiheadAttention`` (q, k, v rows and the output projection's columns of a head
    together). ``groups``: groups declared by hand (:class:`ChannelGroupSpec`); a traced group
    sharing a layer with one is dropped.
    ``scope``: "all" groups share the budget, or only the "expansion" groups, those whose channels
    pass through a depthwise convolution (the hidden layers of inverted-residual and separable
    blocks); the narrow residual streams stay whole, which is what makes MobileNet-style models
    faster on CPUs (see the channel latency results).
    """

    unit: Literal["channels", "params", "flops"] = "channels"
    round_to: int = 1
    tau: float = 0.001
    heads: bool = True
    groups: tuple[ChannelGroupSpec, ...] = ()
    scope: Literal["all", "expansion"] = "all"
    settle: float = 0.5

    def __post_init__(self) -> None:
        if (
            isinstance(self.settle, bool)
            or not isinstance(self.settle, (int, float))
            or not 0 < self.settle <= 1
        ):
            raise ValueError(
                f"Channels(settle=...) is the fraction of the steps after the ramp over which the "
                f"masks harden: a number in (0, 1], got {self.settle!r}"
            )
        if self.unit not in ("channels", "params", "flops"):
            raise ValueError(f"Channels(unit=...) must be 'channels', 'params' or 'flops', got {self.unit!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"Channels(round_to=...) must be a positive int, got {self.round_to!r}")
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not self.tau > 0:
            raise ValueError(f"Channels(tau=...) must be a number > 0 (relative to t^2), got {self.tau!r}")
        if self.scope not in ("all", "expansion"):
            raise ValueError(f"Channels(scope=...) must be 'all' or 'expansion', got {self.scope!r}")
        if not isinstance(self.heads, bool):
            raise ValueError(f"Channels(heads=...) must be True or False, got {self.heads!r}")
        groups = (self.groups,) if isinstance(self.groups, ChannelGroupSpec) else tuple(self.groups)
        if not all(isinstance(g, ChannelGroupSpec) for g in groups):
            raise ValueError("Channels(groups=...) takes pdprune.ChannelGroupSpec objects")
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(
                f"Channels(groups=...) declares the group name(s) "
                f"{sorted({n for n in names if names.count(n) > 1})} more than once"
            )
        object.__setattr__(self, "groups", groups)

    def __str__(self) -> str:
        return "channel"


Pattern = Unstructured | NM | Channels


def parse_pattern(value: str | Pattern | None) -> Pattern:
    """ "unstructured" (or None) -> Unstructured(); "2:4" or NM(2, 4) -> NM(2, 4); "channel" -> Channels()."""
    if value is None:
        return Unstructured()
    if isinstance(value, (Unstructured, NM, Channels)):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "unstructured":
            return Unstructured()
        if text in ("channel", "channels"):
            return Channels()
        parts = text.split(":")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return NM(int(parts[0]), int(parts[1]))
    raise ValueError(f"pattern must be 'unstructured', 'N:M' such as '2:4', or 'channel', got {value!r}")


def is_transformers_conv1d(module: nn.Module) -> bool:
    """True for transformers' GPT-2 style ``Conv1D``: a Linear whose weight is stored (in, out).
    Recognised by shape rather than import, so pdprune never needs transformers installed."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def reduction_dim(module: nn.Module) -> int | None:
    """The weight dimension a layer sums over: input features/channels. Dim 1 for Linear and
    convolutions, dim 0 for transposed convolutions (weight (in, out/groups, *kernel)) and for
    transformers' GPT-2 style ``Conv1D`` (weight (in, out)); None for a type it cannot know."""
    if isinstance(module, _TRANSPOSED) or is_transformers_conv1d(module):
        return 0
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return 1
    return None


def output_units(module: nn.Module, shape: tuple[int, ...]) -> int | None:
    """How many outputs (features or channels) a layer's weight of ``shape`` feeds: dim 0 for
    Linear and convolutions, dim 1 for transformers' ``Conv1D`` and (times the groups) for
    transposed convolutions; None for a type whose layout pdprune does not know."""
    if isinstance(module, _TRANSPOSED):
        return shape[1] * module.groups
    if is_transformers_conv1d(module):
        return shape[1]
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return shape[0]
    return None


def reduction_group_size(module: nn.Module, shape: tuple[int, ...]) -> int | None:
    """How many consecutive weights along the reduction dimension one output sums over before
    another convolution group starts (the whole dimension unless a transposed conv is grouped)."""
    dim = reduction_dim(module)
    if dim is None:
        return None
    size = shape[dim]
    return size // module.groups if isinstance(module, _TRANSPOSED) else size

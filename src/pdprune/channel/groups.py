"""Coupled channel groups: output channels that must be pruned together.

A residual add ties the last convolution of a block to its shortcut; a BatchNorm follows its
convolution; a depthwise convolution's outputs are its inputs. Torch-Pruning's dependency graph
traces the model once on example inputs and finds these couplings (residuals, concatenations,
splits, norms, depthwise chains), so pdprune does not carry its own tracer.

Each group lists its *producers* (modules whose output channels carry the group: their weight
rows, bias and norm affine parameters are masked) and its *consumers* (modules whose input
channels follow; they are shrunk on removal and need no mask).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from pdprune.patterns.specs import is_transformers_conv1d
from pdprune.sharding import local_along, local_part

__all__ = [
    "CONV_TYPES",
    "NORM_TYPES",
    "SCORED_TYPES",
    "ChannelGroup",
    "ChannelMember",
    "Removal",
    "TracedGroup",
    "call_model",
    "member_for",
    "remove_layer_channels",
    "set_size_attributes",
    "zero_channels",
]

Removal = list[Any]  # [module name, is output side, channel indices], as the traced graph records;
# [attention name, "heads", head indices] for the heads of an nn.MultiheadAttention

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
_CROSS_CHANNELNORM_TYPES = (nn.LayerNorm, nn.GroupNorm)
SCORED_TYPES = (nn.Linear, *CONV_TYPES, *_TRANSPOSED)


@dataclass
class ChannelMember:
    """A module whose output channels belong to a group, and where its channel axis lies."""

    name: str
    module: nn.Module
    weight_dim: int  # channel axis of ``module.weight``
    scored: bool  # its weights count in the channel score (Linear and convolutions)
    weight_name: str = "weight"
    bias_name: str = "bias"
    fold: int = 1  # the channel axis holds this many stacked copies of the group's channels (q, k, v: 3)
    repeat: int = 1  # runs of each unit's channels side by side (query heads sharing a key/value head)

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.weight_name)

    def channel_params(self) -> list[tuple[str, int]]:
        """(parameter name, channel axis) of the parameters this member's mask multiplies."""
        params = []
        if getattr(self.module, self.weight_name, None) is not None:
            params.append((self.weight_name, self.weight_dim))
        if getattr(self.module, self.bias_name, None) is not None:
            params.append((self.bias_name, 0))
        return params


@dataclass
class ChannelGroup:
    """Output channels pruned together, with one shared score and one shared mask.

    ``channels`` counts the group's prunable units: output channels for traced groups, or runs
    of ``width`` consecutive channels (attention heads) for declared ones. The kind of group is
    its class: :class:`TracedGroup` (found by the dependency graph, removed through it), or a
    declared group (:mod:`pdprune.channel.declared`, :mod:`pdprune.channel.attention`) removed
    layer by layer, whose ``counts`` ("module.attr" -> "units"/"channels") are then updated.
    """

    unit_name: ClassVar[str] = "channels"
    through_graph: ClassVar[bool] = False  # removed through the traced graph (do these first)

    name: str  # the root module's name
    channels: int
    members: list[ChannelMember]
    consumers: dict[str, int]  # consumer -> input features per group channel (>1 after a flatten)
    root: nn.Module = field(repr=False)
    root_fn: Callable[..., Any] | None = field(repr=False)
    width: int = 1
    counts: dict[str, str] = field(default_factory=dict)

    @property
    def unit_label(self) -> str:
        """What one unit is called in reports: channels, heads or (declared runs of channels) units."""
        return self.unit_name if self.width == 1 or self.unit_name != "channels" else "units"

    def remove(
        self, units: list[int], modules: dict[str, nn.Module], graph: Any
    ) -> tuple[list[Removal], dict[str, int]]:
        """Remove ``units`` physically from the named modules (or through the traced ``graph``);
        return the removals to record in the plan and the size attributes set."""
        raise NotImplementedError

    def has_depthwise(self) -> bool:
        """Whether the channels pass through a depthwise convolution (an expansion layer)."""
        return any(
            isinstance(m.module, CONV_TYPES)
            and m.module.groups > 1
            and m.module.groups == m.module.in_channels
            for m in self.members
        )

    def lay_out(self, member: ChannelMember, per_unit: torch.Tensor) -> torch.Tensor:
        """A per-unit tensor (a mask) along ``member``'s channel axis: each unit over its run of
        ``width * repeat`` consecutive channels, the whole laid ``fold`` times end to end."""
        run = self.width * member.repeat
        laid = per_unit if run == 1 else per_unit.repeat_interleave(run)
        return laid if member.fold == 1 else laid.repeat(member.fold)

    def member_width(self, member: ChannelMember) -> int:
        """Channels of one unit along ``member``'s channel axis, all copies counted."""
        return self.width * member.repeat * member.fold

    def per_unit(self, per_channel: torch.Tensor) -> torch.Tensor:
        """Per-channel scores summed over each unit's channels."""
        return per_channel if self.width == 1 else per_channel.view(self.channels, self.width).sum(1)

    def channel_indices(self, units: list[int]) -> list[int]:
        """The channel indices of the given units."""
        return [u * self.width + i for u in units for i in range(self.width)]

    def scored_weights(self) -> list[tuple[torch.Tensor, int]]:
        """The Linear/conv weights of the group's channels (what L1-norm filter pruning ranks); a
        weight stacking several copies of the channels (q, k, v) is viewed with the copies on
        their own axis, as are the runs of query heads that share a key/value head, so each
        channel's score sums over them."""
        weights = []
        for m in self.members:
            if not m.scored:
                continue
            weight, dim = m.weight, m.weight_dim
            if m.fold > 1 or m.repeat > 1:  # copies and runs onto an axis of their own, before the channels
                before, after = weight.shape[:dim], weight.shape[dim + 1 :]
                split = weight.reshape(*before, m.fold, self.channels, m.repeat, self.width, *after)
                weight = split.movedim(dim + 2, dim + 1).reshape(
                    *before, m.fold * m.repeat, self.channels * self.width, *after
                )
                dim += 1
            weights.append((weight, dim))
        return weights

    def score_parts(self, norm: str = "l2") -> list[tuple[torch.Tensor, int, int, int]]:
        """What :meth:`scale_weights` (``"l2"``) or :meth:`scored_weights` (``"l1"``) read, as
        stored: (weight, channel axis, copies, runs), copies and runs still interleaved along
        the channel axis, for scores summed per row first (weights FSDP2 shards by rows)."""
        norms = self._affine_norms() if norm == "l2" else []
        if norms:
            return [(p, 0, 1, 1) for module in norms for p in (module.weight, module.bias) if p is not None]
        return [(m.weight, m.weight_dim, m.fold, m.repeat) for m in self.members if m.scored]

    def fold_channels(self, per_index: torch.Tensor, copies: int, runs: int) -> torch.Tensor:
        """Per-index sums along a channel axis that holds ``copies`` stacked copies of the group's
        channels and ``runs`` side-by-side runs of each unit, summed into one per channel."""
        if copies == 1 and runs == 1:
            return per_index
        return per_index.view(copies, self.channels, runs, self.width).sum((0, 2)).reshape(-1)

    def _affine_norms(self) -> list[nn.Module]:
        return [
            m.module
            for m in self.members
            if isinstance(m.module, NORM_TYPES) and getattr(m.module, "affine", False)
        ]

    def scale_weights(self) -> list[tuple[torch.Tensor, int]]:
        """The parameters that set the channels' output scale, which PDP's channel norm measures.

        After a BatchNorm (or another per-channel norm with affine parameters) the output no
        longer depends on the conv or Linear weights' scale, only on the norm's weight and bias,
        so those are the channel's parameters then; without such a norm, the Linear/conv weights.
        """
        norms = self._affine_norms()
        if norms:
            return [(p, 0) for norm in norms for p in (norm.weight, norm.bias) if p is not None]
        return self.scored_weights()


@dataclass
class TracedGroup(ChannelGroup):
    """A group the dependency graph found; its removal goes through the graph, which records it."""

    through_graph: ClassVar[bool] = True

    def remove(
        self, units: list[int], modules: dict[str, nn.Module], graph: Any
    ) -> tuple[list[Removal], dict[str, int]]:
        if units:
            root = modules[self.name]
            graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, units).prune()
        return [], {}


def remove_layer_channels(modules: dict[str, nn.Module], removals: list[Removal]) -> None:
    """Remove output (``True``) or input (``False``) channels of named Linear, conv and norm layers."""
    import torch_pruning as tp

    pruners = tp.DependencyGraph()
    for name, output_side, indices in removals:
        module = modules.get(name)
        if module is not None and is_transformers_conv1d(module):
            _remove_conv1d_features(module, bool(output_side), list(indices))
            continue
        pruner = pruners.get_pruner_of_module(module) if module is not None else None
        if pruner is None:
            raise ValueError(
                f"cannot remove channels of {name!r}: no such Linear, convolution or norm in this model"
            )
        (pruner.prune_out_channels if output_side else pruner.prune_in_channels)(module, list(indices))


def _remove_conv1d_features(module: nn.Module, output_side: bool, indices: list[int]) -> None:
    """Remove output features (weight columns and bias) or input features (weight rows) of
    transformers' ``Conv1D``, whose weight is stored (in, out), and update ``nf``/``nx``."""
    weight = module.weight
    axis = 1 if output_side else 0
    dropped = set(indices)
    kept = torch.tensor(
        [i for i in range(weight.shape[axis]) if i not in dropped], dtype=torch.long, device=weight.device
    )
    with torch.no_grad():
        module.weight = nn.Parameter(weight.index_select(axis, kept), requires_grad=weight.requires_grad)
        bias = getattr(module, "bias", None)
        if output_side and isinstance(bias, torch.Tensor):
            module.bias = nn.Parameter(bias.index_select(0, kept), requires_grad=bias.requires_grad)
    setattr(module, "nf" if output_side else "nx", len(kept))


def set_size_attributes(modules: dict[str, nn.Module], attributes: dict[str, int]) -> None:
    """Set ``"module.attr"`` size attributes (e.g. a head count) after a removal."""
    for path, value in attributes.items():
        owner_name, _, attribute = path.rpartition(".")
        owner = modules.get(owner_name)
        if owner is None or not hasattr(owner, attribute):
            raise ValueError(
                f"cannot update {path!r}: {owner_name or 'the model'} has no attribute {attribute!r}"
            )
        setattr(owner, attribute, int(value))


def member_for(name: str, module: nn.Module) -> ChannelMember | str:
    """The member for a producer module, or the reason it cannot be masked."""
    if isinstance(module, _TRANSPOSED):
        if module.groups != 1:
            return f"{name}: grouped transposed convolutions are not supported"
        return ChannelMember(name, module, 1, True)
    if isinstance(module, (nn.Linear, *CONV_TYPES)):
        return ChannelMember(name, module, 0, True)
    if is_transformers_conv1d(module):
        return ChannelMember(name, module, 1, True)  # weight (in, out)
    if isinstance(module, _CROSS_CHANNELNORM_TYPES):
        return (
            f"{name}: {type(module).__name__} normalises across channels, so removing some would change the "
            "rest"
        )
    if isinstance(module, NORM_TYPES):
        return ChannelMember(name, module, 0, False)
    if not any(True for _ in module.parameters(recurse=False)):
        return ChannelMember(name, module, 0, False)  # e.g. a parameter-free op inside the chain
    return f"{name}: {type(module).__name__} layers cannot be channel-pruned with a mask"


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    """Call ``model`` on example inputs as pdprune traces it: a dict is keyword arguments, a
    tuple/list positional ones. A model with a key/value cache (Hugging Face decoders) runs
    without it, so the outputs are the model's tensors, not the cache it would hand back."""
    extra = {"use_cache": False} if _has_cache_switch(model) else {}
    if isinstance(example_inputs, dict):
        return model(**{**example_inputs, **extra})
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs, **extra)
    return model(example_inputs, **extra)


def _has_cache_switch(model: nn.Module) -> bool:
    if getattr(getattr(model, "config", None), "use_cache", None) is None:
        return False
    try:
        return "use_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def flatten_outputs(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_outputs(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten_outputs(v)]
    return [t for v in getattr(value, "__dict__", {}).values() for t in flatten_outputs(v)]


def zero_channels(
    group: ChannelGroup, keep: torch.Tensor, modules: dict[str, nn.Module] | None = None
) -> None:
    """Zero the channels ``keep`` drops in every producer of ``group`` (weight rows, bias, norm
    affine), in place; ``modules`` maps names to the modules of another copy of the model."""
    with torch.no_grad():
        for member in group.members:
            module = modules[member.name] if modules is not None else member.module
            laid = group.lay_out(member, keep)
            for param_name, dim in member.channel_params():
                parameter = getattr(module, param_name)
                here = local_along(
                    parameter, laid, dim, f"{member.name}.{param_name}"
                )  # its rows, if sharded
                shape = [1] * parameter.dim()
                shape[dim] = -1
                local_part(parameter).masked_fill_(~here.view(shape), 0)  # +0.0, not a multiply's -0.0
            running = getattr(module, "running_mean", None)
            if isinstance(running, torch.Tensor) and running.shape == laid.shape:
                # A norm without affine parameters outputs -mean/std for a zero input channel in
                # eval; with the mean at zero the channel is exactly zero, as removal assumes.
                running.masked_fill_(~laid, 0)

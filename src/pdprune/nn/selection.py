"""Which weight tensors of a model take part in pruning."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from pdprune.config import PruneConfig

__all__ = ["DEFAULT_LAYER_TYPES", "PrunedTensor", "default_filter", "select_tensors"]

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def default_filter(module: nn.Module, fqn: str) -> bool:
    """Linear and convolution layers (grouped, depthwise and transposed included)."""
    return isinstance(module, DEFAULT_LAYER_TYPES)


@dataclass
class PrunedTensor:
    """One weight tensor under pruning and every (module, attribute) that uses it (tied weights)."""

    name: str
    users: list[tuple[str, nn.Module]] = field(default_factory=list)

    @property
    def parameter(self) -> nn.Parameter:
        module_name, module = self.users[0]
        return module._parameters["weight"]  # type: ignore[return-value]


def _skipped_by_torch_internals(fqn: str, parent_of: dict[str, nn.Module]) -> bool:
    # nn.MultiheadAttention reads out_proj.weight directly, never calling out_proj.forward, so a
    # mask applied in forward would silently not apply.
    parent = parent_of.get(fqn)
    return isinstance(parent, nn.MultiheadAttention)


def select_tensors(model: nn.Module, config: PruneConfig) -> list[PrunedTensor]:
    """The weight tensors ``config`` selects, in model order, tied weights listed once.

    Raises ValueError naming the problem when nothing is selected or a pattern matches nothing.
    """
    keep = config.filter_fn or default_filter
    parent_of: dict[str, nn.Module] = {}
    for parent_name, parent in model.named_modules():
        for child_name, _ in parent.named_children():
            parent_of[f"{parent_name}.{child_name}" if parent_name else child_name] = parent

    candidates: list[tuple[str, nn.Module]] = []
    for fqn, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is None or not keep(module, fqn) or _skipped_by_torch_internals(fqn, parent_of):
            continue
        candidates.append((fqn, module))
    if not candidates:
        raise ValueError(
            f"{type(model).__name__} has no prunable layer: no module with a 'weight' parameter is "
            f"accepted by the filter (default: Linear, Conv1d/2d/3d, ConvTranspose). Pass "
            f"filter_fn=lambda module, name: ... to choose other layers."
        )
    names = [fqn for fqn, _ in candidates]
    for pattern in config.include:
        if not any(re.search(pattern, n) for n in names):
            raise ValueError(f"include pattern {pattern!r} matches no prunable layer; layers are: {_listing(names)}")
    for pattern in config.exclude:
        if not any(re.search(pattern, n) for n in names):
            raise ValueError(f"exclude pattern {pattern!r} matches no prunable layer; layers are: {_listing(names)}")
    for pattern in config.overrides:
        if not any(re.search(pattern, n) for n in names):
            raise ValueError(f"override pattern {pattern!r} matches no prunable layer; layers are: {_listing(names)}")

    by_parameter: dict[int, PrunedTensor] = {}
    for fqn, module in candidates:
        if config.include and not any(re.search(p, fqn) for p in config.include):
            continue
        if any(re.search(p, fqn) for p in config.exclude):
            continue
        weight = module._parameters["weight"]
        if isinstance(weight, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"{fqn} ({type(module).__name__}) has no shape yet: lazy modules get their weights at the "
                f"first forward. Run the model once on a real batch before prepare()."
            )
        if weight.dim() < 2:
            continue
        entry = by_parameter.setdefault(id(weight), PrunedTensor(name=f"{fqn}.weight" if fqn else "weight"))
        entry.users.append((fqn, module))
    if not by_parameter:
        raise ValueError(
            f"include/exclude leave no layer to prune out of {len(names)}: {_listing(names)}"
        )
    return list(by_parameter.values())


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")

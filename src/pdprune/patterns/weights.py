"""Weight targets: one weight tensor pruned element by element (unstructured) or N of every M
along its reduction dimension, how they are selected, and the hook that makes their layers
compute with the masked weight (see :mod:`pdprune.patterns.hooks`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pdprune.functional import hard_mask, keep_count, nm_hard_mask, nm_threshold
from pdprune.patterns.hooks import ParameterSwapHook
from pdprune.patterns.specs import NM, is_transformers_conv1d

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "WeightHook",
    "WeightTarget",
    "default_filter",
    "replaced",
    "select_weights",
    "unselected_layer_types",
]

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
    """Linear and convolution layers (grouped, depthwise and transposed included), and the
    ``Conv1D`` projections of transformers' GPT-2 family, which are Linear layers stored (in, out)."""
    return isinstance(module, DEFAULT_LAYER_TYPES) or is_transformers_conv1d(module)


@dataclass
class WeightTarget:
    """One weight tensor under pruning, every (name, module) that uses it (tied weights), and the
    schedule's view of it: its budget, the sparsity in force now and the ramp's progress."""

    name: str
    users: list[tuple[str, nn.Module]] = field(default_factory=list)
    tau: float | None = None  # absolute temperature (squared-weight units), or None: relative_tau
    relative_tau: float | None = 0.1  # a fraction of the mean squared weight when pruning starts
    temperature_scale: float = 1.0  # shrinks to 0 while the masks settle after the ramp
    nm: NM | None = None  # N:M along weight dimension ``dim``, or None for unstructured
    dim: int = 1
    fixed: float | None = None  # a sparsity the config fixes for this tensor (override, dense N:M layer)
    note: str = ""
    sparsity: float = 0.0  # in force now; 0 means no mask at all
    progress: float = 0.0  # fraction of the ramp done (N:M scales its group thresholds by it)
    steps_pruning: int = 0  # optimizer steps since warm-up ended
    epoch: int = 0  # bumped at every optimizer step, so nothing cached outlives a step
    calls: int = 0  # forward calls in training mode, to catch layers whose parent bypasses forward()
    kept_after_hardening: int | None = None  # nonzero weights finalize() left in a sharded weight

    @property
    def parameter(self) -> nn.Parameter:
        return self.users[0][1]._parameters["weight"]  # type: ignore[return-value]

    @property
    def module_type(self) -> str:
        return type(self.users[0][1]).__name__

    def unpruned_now(self) -> bool:
        """True when the sparsity in force keeps every weight (also a tiny sparsity that rounds to none)."""
        if self.sparsity == 0.0:
            return True
        return self.nm is None and keep_count(self.parameter.numel(), self.sparsity) >= self.parameter.numel()

    def hard_mask(self, weight: torch.Tensor, sparsity: float) -> torch.Tensor:
        """Boolean keep-mask at ``sparsity``: the largest magnitudes, or exactly N of every M."""
        if self.nm is None or sparsity == 0.0:
            return hard_mask(weight, sparsity, self.name)
        if abs(sparsity - self.nm.sparsity) > 1e-9:
            raise ValueError(
                f"{self.name} is pruned {self.nm}: it hardens at {self.nm.sparsity:g} only, not {sparsity:g}"
            )
        return nm_hard_mask(weight, self.nm.n, self.nm.m, self.dim, name=self.name)

    def nm_threshold(self, weight: torch.Tensor) -> torch.Tensor:
        """N:M: each group's midpoint between its N-th and (N+1)-th largest magnitude, scaled by the
        ramp's progress, so the cut grows smoothly from nothing to exactly N of M."""
        assert self.nm is not None
        return nm_threshold(weight, self.nm.n, self.nm.m, self.dim, name=self.name) * self.progress

    def swapped_out(self, model: nn.Module) -> str | None:
        """Why this target no longer belongs to ``model`` (a layer replaced after prepare), or None."""
        for fqn, module in self.users:
            why = replaced(model, fqn, module)
            if why is not None:
                return why
        return None


class WeightHook(ParameterSwapHook):
    """Runs a module with its masked weight. ``masked(weight) -> tensor`` is the method's mask
    in training for this target."""

    def __init__(self, target: WeightTarget, masked: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.target = target
        self.masked = masked

    def masked_parameters(self, module: nn.Module) -> dict[str, torch.Tensor] | None:
        if not self._enter(module.training or torch.is_grad_enabled()):
            return None
        return {"weight": self.masked(module._parameters["weight"])}  # type: ignore[arg-type]

    # Bookkeeping in plain Python, kept out of torch.compile graphs: a call counter and a sparsity
    # that grows every ramp step would otherwise be guarded on and recompile the graph each step.
    @torch.compiler.disable
    def _enter(self, training: bool) -> bool:
        """Count a call that can train (training mode, or autograd on: a model that
        from_pretrained left in eval mode still trains); True when a mask is in force."""
        if training:
            self.target.calls += 1
        return not self.target.unpruned_now()


def replaced(model: nn.Module, fqn: str, module: nn.Module) -> str | None:
    """Why ``model`` no longer holds ``module`` at ``fqn``, or None. Walks the children dicts
    directly: it runs at every step, and ``get_submodule`` costs several times more."""
    current: nn.Module | None = model
    for part in fqn.split(".") if fqn else ():
        current = current._modules.get(part) if current is not None else None
    if current is None:
        return f"{fqn} is no longer a submodule of the model"
    if current is not module:
        return f"{fqn} was replaced by another module after prepare()"
    return None


def _skipped_by_torch_internals(fqn: str, parent_of: dict[str, nn.Module]) -> bool:
    # nn.MultiheadAttention reads out_proj.weight directly, never calling out_proj.forward, so a
    # mask applied in forward would silently not apply.
    return isinstance(parent_of.get(fqn), nn.MultiheadAttention)


def select_weights(
    model: nn.Module,
    keep: Callable[[nn.Module, str], bool],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> list[WeightTarget]:
    """The weight tensors to prune, in model order, tied weights listed once.

    ``keep(module, name)`` chooses layers; ``include``/``exclude``/``overrides`` are regexes that
    must each match some candidate layer. Raises ValueError naming the problem when nothing is
    selected or a regex matches nothing.
    """
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
            "accepted by the filter (default: Linear, Conv1d/2d/3d, ConvTranspose, transformers' Conv1D). "
            "Pass "
            f"filter_fn=lambda module, name: ... to choose other layers."
        )
    names = [fqn for fqn, _ in candidates]
    for what, patterns in (("include", include), ("exclude", exclude), ("override", overrides)):
        for pattern in patterns:
            if not any(re.search(pattern, n) for n in names):
                raise ValueError(
                    f"{what} pattern {pattern!r} matches no prunable layer; layers are: {_listing(names)}"
                )

    empty: list[str] = []
    by_parameter: dict[int, WeightTarget] = {}
    for fqn, module in candidates:
        if include and not any(re.search(p, fqn) for p in include):
            continue
        if any(re.search(p, fqn) for p in exclude):
            continue
        weight = module._parameters["weight"]
        if isinstance(weight, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"{fqn} ({type(module).__name__}) has no shape yet: lazy modules get their weights at the "
                f"first forward. Run the model once on a real batch before prepare()."
            )
        if weight.numel() == 0:  # e.g. Linear(4, 0): nothing to prune
            empty.append(fqn)
            continue
        if weight.dim() < 2:
            continue
        entry = by_parameter.setdefault(id(weight), WeightTarget(name=f"{fqn}.weight" if fqn else "weight"))
        entry.users.append((fqn, module))
    _add_tied_users(model, by_parameter)
    if not by_parameter:
        if empty and len(empty) == len(names):
            raise ValueError(
                f"every prunable layer of {type(model).__name__} is empty (no weights): {_listing(empty)}"
            )
        raise ValueError(f"include/exclude leave no layer to prune out of {len(names)}: {_listing(names)}")
    return list(by_parameter.values())


def _add_tied_users(model: nn.Module, by_parameter: dict[int, WeightTarget]) -> None:
    """Make every other module that holds a selected weight (a tied embedding, say) a user of
    its target, so it computes with the same mask in training as the pruned layer does.
    Otherwise it would train on the dense tensor and meet the zeros only at finalize()."""
    for fqn, module in model.named_modules():
        for name, parameter in module._parameters.items():
            target = by_parameter.get(id(parameter)) if parameter is not None else None
            if target is None or any(user is module for _, user in target.users):
                continue
            where = f"{fqn}.{name}" if fqn else name
            if name != "weight":
                raise ValueError(
                    f"{target.name} is tied to {where} ({type(module).__name__}), which holds it under "
                    f"another name, so pdprune cannot mask it there too. Leave the layer out with "
                    f"exclude=[{target.users[0][0]!r}], or untie the weights."
                )
            target.users.append((fqn, module))
            tied = f"tied to {where} ({type(module).__name__}), masked there too"
            target.note = f"{target.note}; {tied}" if target.note else tied


def unselected_layer_types(model: nn.Module, targets: Sequence[WeightTarget]) -> dict[str, tuple[int, int]]:
    """Module type -> (layers, parameters) of the modules with a weight matrix that no target
    covers (embeddings, layer types the filter rejects), so a report can say what was left whole."""
    covered = {id(t.parameter) for t in targets}
    counted: set[int] = set()
    found: dict[str, tuple[int, int]] = {}
    for module in model.modules():
        weight = module._parameters.get("weight")
        if weight is None or isinstance(weight, nn.parameter.UninitializedParameter) or weight.dim() < 2:
            continue
        if id(weight) in covered or id(weight) in counted:
            continue
        counted.add(id(weight))
        layers, params = found.get(type(module).__name__, (0, 0))
        found[type(module).__name__] = (layers + 1, params + weight.numel())
    return found


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")

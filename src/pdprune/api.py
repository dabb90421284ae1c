"""The one verb: ``prepare(model, config)``, dispatching on the config's type through a registry.

A new pattern registers its config class with the pruner class that handles it::

    @pdprune.register(BlockConfig)
    class BlockPruner(pdprune.WeightPruner): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from torch import nn

from pdprune.config import ChannelConfig, NMConfig, PruneConfig, UnstructuredConfig
from pdprune.engine.base import Pruner
from pdprune.engine.channel import ChannelPruner
from pdprune.engine.weights import NMPruner, UnstructuredPruner, WeightPruner
from pdprune.patterns.channels import ChannelHook
from pdprune.patterns.weights import WeightHook

__all__ = ["PRUNERS", "prepare", "register"]

#: Config type -> the pruner class that runs it.
PRUNERS: dict[type[PruneConfig], type[Pruner[Any, Any]]] = {}

P = TypeVar("P", bound=type[Pruner[Any, Any]])


def register(config_type: type[PruneConfig]) -> Callable[[P], P]:
    """Class decorator: ``prepare()`` runs configs of ``config_type`` with the decorated pruner."""

    def decorate(pruner_type: P) -> P:
        PRUNERS[config_type] = pruner_type
        return pruner_type

    return decorate


register(UnstructuredConfig)(UnstructuredPruner)
register(NMConfig)(NMPruner)
register(ChannelConfig)(ChannelPruner)


@overload
def prepare(model: nn.Module, config: ChannelConfig, example_inputs: Any = ...) -> ChannelPruner: ...
@overload
def prepare(
    model: nn.Module, config: UnstructuredConfig | NMConfig, example_inputs: None = ...
) -> WeightPruner: ...
@overload
def prepare(model: nn.Module, config: PruneConfig, example_inputs: Any = ...) -> Pruner[Any, Any]: ...


def prepare(model: nn.Module, config: PruneConfig, example_inputs: Any = None) -> Pruner[Any, Any]:
    """Attach pruning masks to the layers of ``model`` that ``config`` selects.

    The model keeps its class, parameters and state_dict keys; masks apply in forward once the
    schedule's warm-up is over. Returns the pruner that drives the schedule: call its ``step()``
    after every optimizer step and ``finalize()`` at the end. Channel pruning traces the model to
    find coupled channels and needs ``example_inputs``: one batch as the model takes it (a
    tensor, a tuple of positional arguments or a dict of keyword arguments). A
    DistributedDataParallel or DataParallel wrapper is looked through: the inner model is pruned,
    with the same layer names as when it is prepared before wrapping.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare() takes an nn.Module, got {type(model).__name__}")
    if not isinstance(config, PruneConfig):
        raise TypeError(f"prepare() takes a pdprune.PruneConfig, got {type(config).__name__}")
    model = _unwrapped(model)
    pruner_type = next((PRUNERS[t] for t in type(config).__mro__ if t in PRUNERS), None)
    if pruner_type is None:
        raise TypeError(f"no pruner is registered for {type(config).__name__}; use pdprune.register()")
    masked = [name for name, module in model.named_modules() if _has_pdprune_hook(module)]
    if masked:
        raise RuntimeError(
            f"this model is already prepared for pruning (masks on {', '.join(masked[:5])}); keep "
            f"using its pruner, or call pruner.remove() (or finalize()) before preparing it again."
        )
    if pruner_type.needs_example_inputs or example_inputs is not None:
        if not pruner_type.needs_example_inputs:
            raise ValueError(
                f"example_inputs is only used by channel pruning, not pattern {config.pattern}; "  # type: ignore[attr-defined]
                f"leave it out"
            )
        if example_inputs is None:
            raise ValueError(
                "channel pruning traces the model to find coupled channels: pass example_inputs=, one "
                "batch as the model takes it (a tensor, a tuple of arguments or a dict of keyword arguments)"
            )
        return pruner_type(model, config, example_inputs)  # type: ignore[call-arg]
    return pruner_type(model, config)  # type: ignore[call-arg]


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel or DataParallel: layer names, and so the keys of
    the pruner's state, are the same whether it was prepared before wrapping or after, and a
    checkpoint from a DDP run loads in one process."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _has_pdprune_hook(module: nn.Module) -> bool:
    return any(
        isinstance(getattr(h, "__self__", None), (WeightHook, ChannelHook))
        for h in module._forward_pre_hooks.values()
    )

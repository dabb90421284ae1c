"""Computing a module with masked parameters without changing the module.

A forward pre-hook swaps some of the module's parameters for masked tensors for the duration of
its forward, and a forward hook (always called, even on error) puts the Parameters back. The
stored weights stay dense, ``state_dict`` keys stay the original ones, ``isinstance`` still
holds, and the hooks hold no reference to the model, so ``copy.deepcopy`` and pickling work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ParameterSwapHook"]


class ParameterSwapHook:
    """Base of the pattern hooks: subclasses say which parameters to swap, for what, and when."""

    def __init__(self) -> None:
        self._stash: list[list[tuple[str, nn.Parameter]]] = []

    def masked_parameters(self, module: nn.Module) -> dict[str, torch.Tensor] | None:
        """Parameter name -> the tensor the module computes with now; None when no mask is in force."""
        raise NotImplementedError

    def before(self, module: nn.Module, args: Any) -> None:
        swapped = self.masked_parameters(module)
        if swapped is None:
            return
        self._stash.append([(name, module._parameters[name]) for name in swapped])  # type: ignore[misc]
        for name, tensor in swapped.items():
            module._parameters[name] = tensor  # type: ignore[assignment]

    def after(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stash:
            for name, parameter in self._stash.pop():
                module._parameters[name] = parameter

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stash"] = []
        return state

    def attach(self, module: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        return [
            module.register_forward_pre_hook(self.before),
            module.register_forward_hook(self.after, always_call=True),
        ]

"""Replaying a recorded removal plan on a fresh model: layer removals, attention heads, size attributes."""

from __future__ import annotations

from torch import nn

from pdprune.channel.attention import remove_mha_heads
from pdprune.channel.groups import Removal, remove_layer_channels, set_size_attributes

__all__ = ["apply_removals"]


def apply_removals(
    modules: dict[str, nn.Module], removals: list[Removal], attributes: dict[str, int]
) -> None:
    """Replay removals and attribute updates as the groups' ``remove()`` recorded them."""
    for name, output_side, indices in removals:
        if output_side == "heads":  # whole heads of an nn.MultiheadAttention
            module = modules.get(name)
            if not isinstance(module, nn.MultiheadAttention):
                raise ValueError(
                    f"cannot remove attention heads of {name!r}: no nn.MultiheadAttention of that name"
                )
            remove_mha_heads(module, list(indices))
        else:
            remove_layer_channels(modules, [[name, output_side, indices]])
    set_size_attributes(modules, attributes)

"""Integration of PDP masks with PyTorch models: selection, masking hooks, the pruner."""

from pdprune.nn.pruner import Pruner, prepare
from pdprune.nn.selection import DEFAULT_LAYER_TYPES, default_filter

__all__ = ["DEFAULT_LAYER_TYPES", "Pruner", "default_filter", "prepare"]

"""pdprune: prune PyTorch models while they train, with Parameter-free Differentiable Pruning.

import pdprune
config = pdprune.PruneConfig(sparsity=0.9, schedule=pdprune.Schedule(total_steps=steps))
pruner = pdprune.prepare(model, config)
for batch in data:
    ...; loss.backward(); optimizer.step(); pruner.step()
report = pruner.finalize()
"""

from pdprune import baselines, export
from pdprune.api import prepare, register
from pdprune.channel.report import ChannelReport
from pdprune.config import (
    DEFAULT_RELATIVE_TAU,
    DEFAULT_TAU,
    DEFAULT_WEIGHT_SETTLE,
    ChannelConfig,
    LayerOverride,
    NMConfig,
    PruneConfig,
    UnstructuredConfig,
    WeightConfig,
)
from pdprune.engine.base import Pruner
from pdprune.engine.channel import ChannelPruner
from pdprune.engine.weights import NMPruner, UnstructuredPruner, WeightPruner
from pdprune.errors import CheckpointError
from pdprune.export import accelerate_2to4, load_shrunk, save_shrunk
from pdprune.methods import PDP, Method
from pdprune.patterns import NM, ChannelGroupSpec, Channels, Unstructured
from pdprune.patterns.weights import DEFAULT_LAYER_TYPES, default_filter
from pdprune.report import LayerReport, PruneReport
from pdprune.schedule import Schedule

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "DEFAULT_RELATIVE_TAU",
    "DEFAULT_TAU",
    "DEFAULT_WEIGHT_SETTLE",
    "NM",
    "PDP",
    "ChannelConfig",
    "ChannelGroupSpec",
    "ChannelPruner",
    "ChannelReport",
    "Channels",
    "CheckpointError",
    "LayerOverride",
    "LayerReport",
    "Method",
    "NMConfig",
    "NMPruner",
    "PruneConfig",
    "PruneReport",
    "Pruner",
    "Schedule",
    "Unstructured",
    "UnstructuredConfig",
    "UnstructuredPruner",
    "WeightConfig",
    "WeightPruner",
    "__version__",
    "accelerate_2to4",
    "baselines",
    "default_filter",
    "export",
    "load_shrunk",
    "prepare",
    "register",
    "save_shrunk",
]

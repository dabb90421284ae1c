"""pdprune: prune PyTorch models while they train, with Parameter-free Differentiable Pruning.

    import pdprune
    config = pdprune.PruneConfig(sparsity=0.9, schedule=pdprune.Schedule(total_steps=steps))
    pruner = pdprune.prepare(model, config)
    for batch in data:
        ...; loss.backward(); optimizer.step(); pruner.step()
    report = pruner.finalize()
"""

from pdprune.config import DEFAULT_TAU, LayerOverride, PruneConfig
from pdprune.method import PDP, MaskMethod
from pdprune.nn import DEFAULT_LAYER_TYPES, Pruner, default_filter, prepare
from pdprune.pattern import NM, ChannelGroupSpec, Channels
from pdprune.channel import ChannelPruner, ChannelReport, load_shrunk, save_shrunk
from pdprune.semi_structured import accelerate_2to4
from pdprune.report import LayerReport, PruneReport
from pdprune.schedule import Schedule

__version__ = "0.1.0"

__all__ = [
    "ChannelPruner",
    "accelerate_2to4",
    "ChannelReport",
    "ChannelGroupSpec",
    "Channels",
    "DEFAULT_LAYER_TYPES",
    "DEFAULT_TAU",
    "LayerOverride",
    "LayerReport",
    "MaskMethod",
    "NM",
    "PDP",
    "PruneConfig",
    "PruneReport",
    "Pruner",
    "Schedule",
    "__version__",
    "default_filter",
    "load_shrunk",
    "prepare",
    "save_shrunk",
]

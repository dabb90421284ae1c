"""Channel pruning: PDP over coupled output channels, physical removal and portable checkpoints."""

from pdprune.channel.checkpoint import load_shrunk, save_shrunk
from pdprune.channel.pruner import ChannelPruner
from pdprune.channel.report import ChannelLayerReport, ChannelReport

__all__ = ["ChannelLayerReport", "ChannelPruner", "ChannelReport", "load_shrunk", "save_shrunk"]

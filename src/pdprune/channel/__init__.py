"""The machinery of channel pruning: coupled groups (traced, declared, attention heads), their
costs, physical removal and replay, and the channel report."""

from pdprune.channel.report import ChannelLayerReport, ChannelReport

__all__ = ["ChannelLayerReport", "ChannelReport"]

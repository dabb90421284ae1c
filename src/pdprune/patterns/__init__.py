"""Sparsity patterns: what a target is (a weight tensor, N of every M weights, a channel group)
and how its mask applies in forward."""

from pdprune.patterns.specs import NM, ChannelGroupSpec, Channels, Pattern, Unstructured, parse_pattern

__all__ = ["NM", "ChannelGroupSpec", "Channels", "Pattern", "Unstructured", "parse_pattern"]

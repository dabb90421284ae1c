"""Baselines behind the same interface as PDP: pass one as ``PruneConfig(method=...)``."""

from pdprune.baselines.channel import L1Channel
from pdprune.baselines.magnitude import GMP, OneShot
from pdprune.baselines.srste import SRSTE

__all__ = ["GMP", "L1Channel", "OneShot", "SRSTE"]

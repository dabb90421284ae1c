"""Baselines behind the same interface as PDP: pass one as ``PruneConfig(method=...)``."""

from pdprune.baselines.magnitude import GMP, OneShot

__all__ = ["GMP", "OneShot"]

"""The baselines PDP is compared with, run under the same schedule, budgets and training loop:
pass one as ``PruneConfig(method=...)``."""

from pdprune.methods import GMP, SRSTE, L1Channel, OneShot

__all__ = ["GMP", "SRSTE", "L1Channel", "OneShot"]

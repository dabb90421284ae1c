"""Masking rules behind one protocol (:class:`Method`): PDP and the baselines it is measured against."""

from pdprune.methods.base import Method
from pdprune.methods.gmp import GMP, OneShot
from pdprune.methods.l1channel import L1Channel
from pdprune.methods.pdp import PDP
from pdprune.methods.srste import SRSTE

__all__ = ["GMP", "PDP", "SRSTE", "L1Channel", "Method", "OneShot"]

"""Small reference models used by the demo and the benchmarks."""

from pdprune.models.small_cnn import SmallCNN

__all__ = ["SmallCNN"]

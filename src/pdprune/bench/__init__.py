"""`pdprune bench latency`: dense vs pruned inference time of a model on this machine.

The research harness (accuracy grid, tasks, datasets, reference models) is not part of the
installed package: it lives in the repository's benchmarks/ folder.
"""

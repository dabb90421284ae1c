"""pdprune's benchmarks: scripts run from the repository root as ``python -m benchmarks.<name>``,
the research harness they share (benchmarks.harness) and their committed results (results/).
See benchmarks/README.md."""

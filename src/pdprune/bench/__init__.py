"""Benchmarks that compare pruning methods at equal budget and write result files."""

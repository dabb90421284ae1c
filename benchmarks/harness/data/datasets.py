"""Dataset registry: the image datasets the harness's tasks accept, by name."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.harness.data.fashion_mnist import load_fashion_mnist
from benchmarks.harness.data.split import ImageSplit

__all__ = ["DATASETS", "ImageSplit", "load_dataset"]

DATASETS: dict[str, Callable[[], ImageSplit]] = {"fashion-mnist": load_fashion_mnist}


def load_dataset(name: str) -> ImageSplit:
    """Load an image dataset by name ("fashion-mnist")."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
    return loader()

"""Dataset registry: names the CLI and benchmarks accept."""

from __future__ import annotations

from collections.abc import Callable

from pdprune.data.digits import load_digits
from pdprune.data.fashion_mnist import load_fashion_mnist
from pdprune.data.split import ImageSplit

__all__ = ["DATASETS", "ImageSplit", "load_dataset"]

DATASETS: dict[str, Callable[[], ImageSplit]] = {
    "digits": load_digits,
    "fashion-mnist": load_fashion_mnist,
}


def load_dataset(name: str) -> ImageSplit:
    """Load a dataset by name ("digits" or "fashion-mnist")."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
    return loader()

"""Dataset registry: the image datasets the harness's tasks accept, by name. The loaders are the
library's own (``pdprune.demo.data``), so the demo and the benchmarks read the same tensors."""

from __future__ import annotations

from collections.abc import Callable

from pdprune.demo.data import ImageSplit, load_fashion_mnist

__all__ = ["DATASETS", "ImageSplit", "load_dataset"]

DATASETS: dict[str, Callable[[], ImageSplit]] = {"fashion-mnist": load_fashion_mnist}


def load_dataset(name: str) -> ImageSplit:
    """Load an image dataset by name ("fashion-mnist")."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
    return loader()

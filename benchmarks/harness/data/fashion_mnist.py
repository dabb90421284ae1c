"""Fashion-MNIST (60k train / 10k test 28x28 images) from Debian's dataset-fashion-mnist package."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness.data.split import ImageSplit

__all__ = ["FashionMNISTNotFound", "find_fashion_mnist", "load_fashion_mnist", "read_idx"]

ENV_VAR = "PDPRUNE_FASHION_MNIST_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
# Channel statistics of the 60k training images, so train and test are standardised alike.
MEAN, STD = 0.2860, 0.3530


class FashionMNISTNotFound(FileNotFoundError):
    """The dataset files are not installed."""


def find_fashion_mnist() -> Path:
    """The folder holding the four gzip IDX files, or a FashionMNISTNotFound saying how to get it."""
    candidates = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    candidates.append(DEBIAN_DIR)
    for folder in candidates:
        if all((folder / name).is_file() for name in FILES.values()):
            return folder
    raise FashionMNISTNotFound(
        f"Fashion-MNIST not found in {', '.join(map(str, candidates))}. Install it with "
        f"'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or point {ENV_VAR} at a "
        f"folder holding {', '.join(FILES.values())}."
    )


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file (the MNIST format) into a numpy array."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {shape}, found {array.size} values")
    return array.reshape(shape)


def load_fashion_mnist(folder: str | os.PathLike[str] | None = None) -> ImageSplit:
    """The official split, standardised; the training set is shuffled once with a fixed seed so
    that ``subset(n)`` takes a class-balanced sample."""
    root = Path(folder) if folder is not None else find_fashion_mnist()
    arrays = {key: read_idx(root / name) for key, name in FILES.items()}
    order = np.random.default_rng(0).permutation(len(arrays["y_train"]))

    def as_x(a: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(a.astype(np.float32) / 255.0) - MEAN) / STD).unsqueeze(1)

    return ImageSplit(
        "fashion-mnist",
        as_x(arrays["x_train"][order]).contiguous(),
        torch.from_numpy(arrays["y_train"][order].astype(np.int64)),
        as_x(arrays["x_test"]).contiguous(),
        torch.from_numpy(arrays["y_test"].astype(np.int64)),
        10,
    )

"""The demo's real data, as in-memory tensors: scikit-learn's digits (the default, tiny) and
Fashion-MNIST from Debian's dataset-fashion-mnist package. Nothing is downloaded."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "FashionMNISTNotFound",
    "ImageSplit",
    "find_fashion_mnist",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "read_idx",
]


@dataclass(frozen=True)
class ImageSplit:
    """Normalised images (N, C, H, W) float32 and integer labels, already split."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def subset(self, train: int | None = None, test: int | None = None) -> ImageSplit:
        """The first ``train`` / ``test`` examples (the loaders already shuffle deterministically)."""
        return ImageSplit(
            self.name,
            self.x_train[:train],
            self.y_train[:train],
            self.x_test[:test],
            self.y_test[:test],
            self.num_classes,
        )


# --- digits ---------------------------------------------------------------------------------------

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # the split is part of the dataset's definition, not of a run's seed


def load_digits() -> ImageSplit:
    """1,797 real 8x8 digits in 10 classes: a fixed stratified 80/20 split, standardised."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError(
            "the digits dataset ships with scikit-learn: pip install 'pdprune[demo]' (or scikit-learn)"
        ) from None
    bunch = sklearn_digits()
    images = bunch.images.astype("float32") / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        bunch.target,
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=bunch.target,
    )
    mean, std = float(x_train.mean()), float(x_train.std())

    def as_x(a: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(a) - mean) / std).unsqueeze(1).contiguous()

    return ImageSplit(
        "digits",
        as_x(x_train),
        torch.from_numpy(y_train).long(),
        as_x(x_test),
        torch.from_numpy(y_test).long(),
        10,
    )


# --- Fashion-MNIST ----------------------------------------------------------------------------------

ENV_VAR = "PDPRUNE_FASHION_MNIST_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
# Pixel statistics of the 60k training images, so train and test are standardised alike.
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
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {shape}, found {array.size} values")
    return array.reshape(shape)


def load_fashion_mnist(folder: str | os.PathLike[str] | None = None) -> ImageSplit:
    """The official 60k/10k split, standardised; the training set is shuffled once with a fixed
    seed so that ``subset(n)`` takes a class-balanced sample."""
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


# --- by name ------------------------------------------------------------------------------------------

DATASETS: dict[str, Callable[[], ImageSplit]] = {"digits": load_digits, "fashion-mnist": load_fashion_mnist}


def load_dataset(name: str) -> ImageSplit:
    """Load a dataset by name ("digits" or "fashion-mnist")."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
    return loader()

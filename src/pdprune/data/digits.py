"""scikit-learn's handwritten digits: 1,797 real 8x8 images in 10 classes, shipped with the library."""

from __future__ import annotations

import torch

from pdprune.data.split import ImageSplit

__all__ = ["load_digits"]

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the split is part of the dataset's definition, not of a run's seed


def load_digits() -> ImageSplit:
    """A fixed stratified 80/20 split, pixels scaled to [0, 1] and standardised."""
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
        images, bunch.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=bunch.target
    )
    mean, std = float(x_train.mean()), float(x_train.std())
    as_x = lambda a: ((torch.from_numpy(a) - mean) / std).unsqueeze(1).contiguous()  # noqa: E731
    return ImageSplit(
        "digits",
        as_x(x_train),
        torch.from_numpy(y_train).long(),
        as_x(x_test),
        torch.from_numpy(y_test).long(),
        10,
    )

"""The in-memory train/test split every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ImageSplit"]


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
        """The first ``train`` / ``test`` examples (loaders already shuffle deterministically)."""
        return ImageSplit(
            self.name,
            self.x_train[:train],
            self.y_train[:train],
            self.x_test[:test],
            self.y_test[:test],
            self.num_classes,
        )

"""A small convolutional classifier sized for 8x8 digits and 28x28 Fashion-MNIST."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks with BatchNorm, then a two-layer classifier.

    Images of side >= 16 are pooled after each block (28 -> 14 -> 7); smaller ones once (8 -> 4).
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: int = 32
    ) -> None:
        super().__init__()
        pool_twice = image_size >= 16
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2) if pool_twice else nn.Identity(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = image_size // 4 if pool_twice else image_size // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, 4 * width),
            nn.ReLU(inplace=True),
            nn.Linear(4 * width, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

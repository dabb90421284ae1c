"""ImageNet-shaped networks for latency benchmarks at 224x224: the layer shapes of ResNet-18 and
MobileNetV2 (width 1.0), built from the same blocks as the small models."""

from __future__ import annotations

from torch import Tensor, nn

from benchmarks.harness.models.mobilenet import InvertedResidual, _conv_bn
from benchmarks.harness.models.resnet import BasicBlock

__all__ = ["MobileNetV2", "ResNet18"]


class ResNet18(nn.Module):
    """7x7 stride-2 stem and max-pool, four stages of two BasicBlocks (64, 128, 256, 512)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        layers: list[nn.Module] = []
        previous = 64
        for index, width in enumerate((64, 128, 256, 512)):
            for block in range(2):
                layers.append(BasicBlock(previous, width, 2 if index > 0 and block == 0 else 1))
                previous = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


class MobileNetV2(nn.Module):
    """MobileNetV2 1.0: stride-2 stem, the paper's seven inverted-residual stages, 1280-wide head conv."""

    SETTINGS: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, 32, 3, stride=2)]
        previous = 32
        for expand, width, repeats, stride in self.SETTINGS:
            for index in range(repeats):
                layers.append(
                    InvertedResidual(
                        previous, width, stride if index == 0 else 1, expand, skip_unit_expand=True
                    )
                )
                previous = width
        layers.append(_conv_bn(previous, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))

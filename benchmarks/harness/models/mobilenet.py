"""A small MobileNetV2 for 28x28 images: inverted residuals with depthwise convolutions."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["InvertedResidual", "SmallMobileNetV2"]


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes allow."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand: int, skip_unit_expand: bool = False
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.use_residual = stride == 1 and in_channels == out_channels
        layers = [] if expand == 1 and skip_unit_expand else [_conv_bn(in_channels, hidden, 1)]
        self.block = nn.Sequential(
            *layers,
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, out_channels, 1, act=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class SmallMobileNetV2(nn.Module):
    """Stem conv, inverted-residual stages (expansion, width, repeats, stride), 1x1 head conv."""

    SETTINGS: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (4, 24, 2, 2),
        (4, 32, 2, 2),
        (4, 64, 1, 1),
    )

    def __init__(self, in_channels: int = 1, num_classes: int = 10, stem: int = 16, last: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, stem, 3)]
        previous = stem
        for expand, width, repeats, stride in self.SETTINGS:
            for index in range(repeats):
                layers.append(InvertedResidual(previous, width, stride if index == 0 else 1, expand))
                previous = width
        layers.append(_conv_bn(previous, last, 1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))

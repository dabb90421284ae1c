"""Small reference models used by the demo and the benchmarks."""

from pdprune.models.imagenet import MobileNetV2, ResNet18
from pdprune.models.mobilenet import SmallMobileNetV2
from pdprune.models.resnet import SmallResNet
from pdprune.models.small_cnn import SmallCNN

__all__ = ["MobileNetV2", "ResNet18", "SmallCNN", "SmallMobileNetV2", "SmallResNet"]

"""Reference models of the benchmarks: small CNNs for 28x28 Fashion-MNIST (SmallResNet,
SmallMobileNetV2), ImageNet-shaped ResNet18 and MobileNetV2 for latency at 224x224, and the
pretrained MiniLM-L6 classifier (benchmarks.harness.models.minilm, needs transformers)."""

from benchmarks.harness.models.imagenet import MobileNetV2, ResNet18
from benchmarks.harness.models.mobilenet import SmallMobileNetV2
from benchmarks.harness.models.resnet import SmallResNet

__all__ = ["MobileNetV2", "ResNet18", "SmallMobileNetV2", "SmallResNet"]

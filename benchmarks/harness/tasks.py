"""Benchmark tasks: a model, real data, a training recipe and a test metric, behind one call."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import torch
from torch import nn

from benchmarks.harness.data import ImageSplit, load_dataset
from benchmarks.harness.training import TrainSettings, evaluate, steps_per_epoch, train
from pdprune import Channels, PruneConfig, prepare

__all__ = ["IMAGE_MODELS", "ImageTask", "RunOutcome", "Task", "is_channel"]

ConfigFor = Callable[[int], PruneConfig]  # total steps -> config


def is_channel(config: PruneConfig) -> bool:
    """Whether ``config`` prunes whole channels (the harness always gives them a Channels object)."""
    return isinstance(config.pattern, Channels)


@dataclass(frozen=True)
class RunOutcome:
    accuracy: float
    achieved_sparsity: float
    seconds: float
    steps: int


class Task(Protocol):
    name: str

    def describe(self) -> dict[str, object]: ...

    def run(self, seed: int, config_for: ConfigFor | None, progress: bool, label: str) -> RunOutcome: ...


def _resnet(channels: int, classes: int) -> nn.Module:
    from benchmarks.harness.models import SmallResNet

    return SmallResNet(channels, classes)


def _mobilenet(channels: int, classes: int) -> nn.Module:
    from benchmarks.harness.models import SmallMobileNetV2

    return SmallMobileNetV2(channels, classes)


IMAGE_MODELS: dict[str, Callable[[int, int], nn.Module]] = {"resnet": _resnet, "mobilenetv2": _mobilenet}


@dataclass
class ImageTask:
    """An image classifier from :mod:`benchmarks.harness.models` trained on a dataset from
    :mod:`benchmarks.harness.data`."""

    dataset: str
    model: str
    epochs: int
    train_limit: int | None = None
    test_limit: int | None = None
    batch_size: int = 64
    lr: float = 2e-3

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.model}"

    @cached_property
    def data(self) -> ImageSplit:
        data = load_dataset(self.dataset)
        return data.subset(train=self.train_limit, test=self.test_limit)

    def describe(self) -> dict[str, object]:
        return {
            "task": self.name,
            "train_examples": len(self.data.x_train),
            "test_examples": len(self.data.x_test),
            "epochs": self.epochs,
            "steps": self.epochs * steps_per_epoch(len(self.data.x_train), self.batch_size),
            "optimizer": f"Adam lr {self.lr}, cosine decay to 0, batch {self.batch_size}",
        }

    def run(self, seed: int, config_for: ConfigFor | None, progress: bool, label: str) -> RunOutcome:
        torch.manual_seed(seed)
        model = IMAGE_MODELS[self.model](self.data.image_shape[0], self.data.num_classes)
        settings = TrainSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
            progress=progress,
            description=label,
        )
        started = time.perf_counter()
        channel = False

        def make(m: nn.Module, total: int) -> Any:
            nonlocal channel
            config = config_for(total)  # type: ignore[misc]
            channel = is_channel(config)
            return prepare(m, config, example_inputs=self.data.x_train[:2] if channel else None)

        pruner = train(model, self.data, settings, make if config_for else None)
        sparsity = pruner.finalize().achieved_sparsity if pruner is not None else 0.0
        if channel:
            pruner.shrink()  # measured as deployed: the smaller model
        seconds = time.perf_counter() - started
        accuracy = evaluate(model, self.data.x_test, self.data.y_test)
        steps = self.epochs * steps_per_epoch(len(self.data.x_train), self.batch_size)
        return RunOutcome(accuracy, sparsity, seconds, steps)

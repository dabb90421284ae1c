"""Benchmark tasks: a model, real data, a training recipe and a test metric, behind one call."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    from_cache: bool = False  # a dense run read from an earlier invocation's cache (seconds as measured then)


class Task(Protocol):
    name: str

    def describe(self) -> dict[str, object]: ...

    def run(self, seed: int, config_for: ConfigFor | None, progress: bool, label: str) -> RunOutcome: ...


ImageShape = tuple[int, int, int]


def _resnet(shape: ImageShape, classes: int) -> nn.Module:
    from benchmarks.harness.models import SmallResNet

    return SmallResNet(shape[0], classes)


def _mobilenet(shape: ImageShape, classes: int) -> nn.Module:
    from benchmarks.harness.models import SmallMobileNetV2

    return SmallMobileNetV2(shape[0], classes)


def _small_cnn(shape: ImageShape, classes: int) -> nn.Module:
    from pdprune.demo.model import SmallCNN

    return SmallCNN(shape[0], classes, image_size=shape[1])


# name -> (image shape, classes) -> model
IMAGE_MODELS: dict[str, Callable[[ImageShape, int], nn.Module]] = {
    "resnet": _resnet,
    "mobilenetv2": _mobilenet,
    "smallcnn": _small_cnn,
}


@dataclass
class ImageTask:
    """An image classifier from :mod:`benchmarks.harness.models` trained on a dataset from
    :mod:`benchmarks.harness.data`.

    With ``pretrain_epochs`` > 0 every run starts from the same dense model of its seed, trained
    first for that many epochs at ``pretrain_lr`` (once per seed, shared by every method): the
    fine-tuning scenario, where pruning meets weights that are already trained. ``epochs`` and
    ``lr`` are then the fine-tune's, and the dense row is the same fine-tune without pruning.
    """

    dataset: str
    model: str
    epochs: int
    train_limit: int | None = None
    test_limit: int | None = None
    batch_size: int = 64
    lr: float = 2e-3
    pretrain_epochs: int = 0
    pretrain_lr: float = 2e-3
    _pretrained: dict[int, tuple[dict[str, torch.Tensor], float]] = field(
        default_factory=dict, repr=False
    )  # seed -> (dense weights, their test accuracy)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.model}" + ("/pretrained" if self.pretrain_epochs else "")

    @cached_property
    def data(self) -> ImageSplit:
        data = load_dataset(self.dataset)
        return data.subset(train=self.train_limit, test=self.test_limit)

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {
            "task": self.name,
            "train_examples": len(self.data.x_train),
            "test_examples": len(self.data.x_test),
            "epochs": self.epochs,
            "steps": self.epochs * steps_per_epoch(len(self.data.x_train), self.batch_size),
            "optimizer": f"Adam lr {self.lr}, cosine decay to 0, batch {self.batch_size}",
        }
        if self.pretrain_epochs:
            described["start"] = (
                f"a dense model of the same seed trained {self.pretrain_epochs} epochs "
                f"(Adam lr {self.pretrain_lr}, cosine), then fine-tuned for the epochs above"
            )
            pretrained = {seed: accuracy for seed, (_, accuracy) in sorted(self._pretrained.items())}
            if pretrained:
                described["pretrained_accuracy"] = {str(k): round(100 * v, 2) for k, v in pretrained.items()}
        return described

    def _new_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return IMAGE_MODELS[self.model](self.data.image_shape, self.data.num_classes)

    def _starting_model(self, seed: int) -> nn.Module:
        """A fresh model of ``seed``, or (fine-tuning) a copy of that seed's pretrained one."""
        model = self._new_model(seed)
        if not self.pretrain_epochs:
            return model
        if seed not in self._pretrained:
            settings = TrainSettings(
                epochs=self.pretrain_epochs,
                batch_size=self.batch_size,
                lr=self.pretrain_lr,
                seed=seed,
                progress=False,
            )
            train(model, self.data, settings, None)
            accuracy = evaluate(model, self.data.x_test, self.data.y_test)
            self._pretrained[seed] = ({k: v.clone() for k, v in model.state_dict().items()}, accuracy)
        model.load_state_dict(self._pretrained[seed][0])
        return model

    def run(self, seed: int, config_for: ConfigFor | None, progress: bool, label: str) -> RunOutcome:
        started = time.perf_counter()
        model, pruner = self.fine_tune(seed, config_for, progress, label)
        sparsity = pruner.finalize().achieved_sparsity if pruner is not None else 0.0
        if pruner is not None and is_channel(pruner.config):
            pruner.shrink()  # measured as deployed: the smaller model
        seconds = time.perf_counter() - started
        accuracy = evaluate(model, self.data.x_test, self.data.y_test)
        steps = self.epochs * steps_per_epoch(len(self.data.x_train), self.batch_size)
        return RunOutcome(accuracy, sparsity, seconds, steps)

    def fine_tune(
        self,
        seed: int,
        config_for: ConfigFor | None,
        progress: bool = False,
        label: str = "",
        wrap: Callable[[Any, nn.Module], Any] | None = None,
    ) -> tuple[nn.Module, Any]:
        """Train (or, with ``pretrain_epochs``, fine-tune) seed's model, pruned when ``config_for``
        is given: the model and its pruner, not yet finalized (None without ``config_for``).
        ``wrap(pruner, model)`` may put an observer around the pruner that passes ``step()`` on."""
        model = self._starting_model(seed)
        # The fine-tune visits the data in another order than the pretraining did.
        torch.manual_seed(seed + 1000 if self.pretrain_epochs else seed)
        settings = TrainSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed + 1000 if self.pretrain_epochs else seed,
            progress=progress,
            description=label,
        )
        pruners = []

        def make(m: nn.Module, total: int) -> Any:
            config = config_for(total)  # type: ignore[misc]
            pruner = prepare(m, config, example_inputs=self.data.x_train[:2] if is_channel(config) else None)
            pruners.append(pruner)
            return wrap(pruner, m) if wrap is not None else pruner

        train(model, self.data, settings, make if config_for else None)
        return model, (pruners[0] if pruners else None)

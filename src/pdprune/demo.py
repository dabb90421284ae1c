"""The main job: train a small CNN dense and with PDP for the same epochs, then compare."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pdprune.config import DEFAULT_TAU, PruneConfig
from pdprune.data import load_dataset
from pdprune.machine import machine_info
from pdprune.models import SmallCNN
from pdprune.nn import prepare
from pdprune.pattern import NM, Channels, parse_pattern
from pdprune.channel.report import ChannelReport
from pdprune.latency import LatencyResult, compare_latency
from pdprune.report import PruneReport
from pdprune.schedule import CHANNEL_RAMP, Schedule
from pdprune.training import TrainSettings, evaluate, train

__all__ = ["DEFAULT_EPOCHS", "ComparisonResult", "run_comparison"]

DEFAULT_EPOCHS = {"digits": 30, "fashion-mnist": 8}


@dataclass(frozen=True)
class ComparisonResult:
    """Dense and PDP-pruned twins trained with the same data order, epochs and optimizer."""

    dataset: str
    train_examples: int
    test_examples: int
    epochs: int
    seed: int
    sparsity: float
    pattern: str
    tau: float
    dense_accuracy: float
    pruned_accuracy: float
    dense_params: int
    pruned_nonzero_params: int
    dense_seconds: float
    pruned_seconds: float
    report: PruneReport | ChannelReport
    latency: LatencyResult | None = None  # dense vs shrunk, for channel pruning

    def to_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in self.__dict__.items() if k not in ("report", "latency")}
        return fields | {
            "latency": self.latency.to_dict() if self.latency is not None else None,
            "machine": machine_info(),
            "achieved_sparsity": self.report.achieved_sparsity,
            "accuracy_drop_points": 100 * (self.dense_accuracy - self.pruned_accuracy),
            "report": self.report.to_dict(),
        }


def _build_model(data_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    channels, side, _ = data_shape
    return SmallCNN(in_channels=channels, num_classes=num_classes, image_size=side)


def run_comparison(
    dataset: str = "digits",
    sparsity: float = 0.9,
    epochs: int | None = None,
    seed: int = 0,
    tau: float | None = None,
    train_limit: int | None = None,
    warmup: float = 0.1,
    ramp: float | None = None,
    progress: bool = True,
    pattern: str = "unstructured",
) -> ComparisonResult:
    """Train dense and PDP twins of :class:`SmallCNN` on ``dataset`` and measure both.

    With an N:M ``pattern`` (e.g. "2:4") ``sparsity`` is ignored and layers N:M cannot divide
    (the one-channel stem) stay dense; the report lists them. ``ramp`` defaults to half the steps,
    and to :data:`~pdprune.schedule.CHANNEL_RAMP` for channels."""
    data = load_dataset(dataset)
    if train_limit is not None:
        data = data.subset(train=train_limit)
    epochs = epochs if epochs is not None else DEFAULT_EPOCHS.get(dataset, 10)
    parsed = parse_pattern(pattern)
    nm = parsed if isinstance(parsed, NM) else None
    if nm is not None:
        sparsity = nm.sparsity
    if isinstance(parsed, Channels):  # channel masks take tau relative to t^2
        parsed = Channels(tau=tau if tau is not None else Channels().tau)
        tau = parsed.tau
    if ramp is None:
        ramp = CHANNEL_RAMP if isinstance(parsed, Channels) else 0.5
    tau = DEFAULT_TAU if tau is None else tau
    config_for = lambda total: PruneConfig(  # noqa: E731
        sparsity=sparsity,
        tau=tau,
        schedule=Schedule(total_steps=total, warmup=warmup, ramp=ramp),
        pattern=parsed if parsed is not None else "unstructured",
        indivisible="dense",
    )
    config_for(100)  # a bad pattern or sparsity fails here, before any training

    def settings(description: str) -> TrainSettings:
        return TrainSettings(epochs=epochs, seed=seed, progress=progress, description=description)

    dense = _build_model(data.image_shape, data.num_classes, seed)
    started = time.perf_counter()
    train(dense, data, settings("dense"))
    dense_seconds = time.perf_counter() - started

    pruned = _build_model(data.image_shape, data.num_classes, seed)
    started = time.perf_counter()
    channels = isinstance(parsed, Channels)
    label = f"PDP {nm}" if nm is not None else f"PDP {'channels ' if channels else ''}{sparsity:.0%}"
    example = data.x_train[:2] if channels else None
    pruner = train(pruned, data, settings(label), lambda m, total: prepare(m, config_for(total), example_inputs=example))
    assert pruner is not None
    report = pruner.finalize()
    latency = None
    if channels:
        pruner.shrink()  # the same SmallCNN class, with fewer channels
        report = pruner.report()
        latency = compare_latency(dense, pruned, data.x_test[:256])
    pruned_seconds = time.perf_counter() - started

    dense_params = sum(p.numel() for p in dense.parameters())
    return ComparisonResult(
        dataset=dataset,
        train_examples=len(data.x_train),
        test_examples=len(data.x_test),
        epochs=epochs,
        seed=seed,
        sparsity=sparsity,
        pattern=str(parsed) if parsed is not None else "unstructured",
        tau=tau,
        dense_accuracy=evaluate(dense, data.x_test, data.y_test),
        pruned_accuracy=evaluate(pruned, data.x_test, data.y_test),
        dense_params=dense_params,
        pruned_nonzero_params=sum(int(p.count_nonzero()) for p in pruned.parameters()),
        dense_seconds=dense_seconds,
        pruned_seconds=pruned_seconds,
        report=report,
        latency=latency,
    )

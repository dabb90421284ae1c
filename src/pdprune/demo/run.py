"""The demo's one job: train a small CNN dense and with PDP for the same epochs, then compare."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import pdprune
from pdprune.demo.data import load_dataset
from pdprune.demo.model import SmallCNN
from pdprune.demo.train import TrainSettings, evaluate, train
from pdprune.latency import LatencyResult, compare_latency
from pdprune.machine import machine_info
from pdprune.patterns import parse_pattern

__all__ = [
    "CHANNEL_RAMP",
    "DEFAULT_EPOCHS",
    "ComparisonResult",
    "DemoTarget",
    "build_model",
    "demo_target",
    "run_comparison",
    "target_config",
]

DEFAULT_EPOCHS = {"digits": 30, "fashion-mnist": 8}
# Channel pruning changes the architecture, so the network needs steps on its final shape: the
# Fashion-MNIST harness (10 seeds, half the FLOPs) preferred a 20% ramp to 50% on both CNNs
# (benchmarks/results/accuracy/accuracy_cpu-2core-fmnist-channel-ramp02*-10seeds.md).
CHANNEL_RAMP = 0.2


@dataclass(frozen=True)
class DemoTarget:
    """What one demo run prunes to, with the words the command line prints for it."""

    pattern: str | pdprune.NM | pdprune.Channels
    sparsity: float  # of the weights; with channels, of the channels; with N:M, the pattern's
    text: str  # e.g. "target sparsity 90%"
    label: str  # column header of the pruned run, e.g. "PDP 90%"

    @property
    def channels(self) -> bool:
        return isinstance(self.pattern, pdprune.Channels)


def demo_target(pattern: str = "unstructured", sparsity: float | None = None) -> DemoTarget:
    """Check ``pattern`` and ``sparsity`` together: N:M fixes the sparsity itself, so giving both
    is an error; otherwise the sparsity defaults to 0.9 (0.5 of the channels with "channel")."""
    parsed = parse_pattern(pattern)
    if isinstance(parsed, pdprune.NM):
        if sparsity is not None:
            raise ValueError(
                f"--sparsity does not apply to --pattern {parsed} (it removes {parsed.sparsity:g} of every "
                "group); drop one"
            )
        return DemoTarget(parsed, parsed.sparsity, f"pattern {parsed}", f"PDP {parsed}")
    if isinstance(parsed, pdprune.Channels):
        sparsity = 0.5 if sparsity is None else sparsity
        return DemoTarget(parsed, sparsity, f"{sparsity:.0%} of the channels", f"PDP ch {sparsity:.0%}")
    sparsity = 0.9 if sparsity is None else sparsity
    return DemoTarget(parsed, sparsity, f"target sparsity {sparsity:.0%}", f"PDP {sparsity:.0%}")


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
    temperature: dict[str, float | None]  # the mask temperature settings the pruned twin used
    dense_accuracy: float
    pruned_accuracy: float
    dense_params: int
    pruned_nonzero_params: int
    dense_seconds: float
    pruned_seconds: float
    report: pdprune.PruneReport | pdprune.ChannelReport
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


def target_config(target: DemoTarget, tau: float | None, schedule: pdprune.Schedule) -> pdprune.PruneConfig:
    """Only the settings that apply to the pattern: channels take their tau inside Channels (relative
    to t^2), N:M takes no sparsity and leaves the layers it cannot divide dense. A ``tau`` of None
    keeps the library's default temperature."""
    if target.channels:
        channels = pdprune.Channels() if tau is None else pdprune.Channels(tau=tau)
        return pdprune.PruneConfig(sparsity=target.sparsity, pattern=channels, schedule=schedule)
    temperature = {} if tau is None else {"tau": tau}
    if isinstance(target.pattern, pdprune.NM):
        return pdprune.PruneConfig(
            pattern=target.pattern, schedule=schedule, indivisible="dense", **temperature
        )
    return pdprune.PruneConfig(sparsity=target.sparsity, schedule=schedule, **temperature)


def build_model(image_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    """The demo's :class:`SmallCNN` for images of ``image_shape``, initialised from ``seed``."""
    torch.manual_seed(seed)
    channels, side, _ = image_shape
    return SmallCNN(in_channels=channels, num_classes=num_classes, image_size=side)


def run_comparison(
    dataset: str = "digits",
    sparsity: float | None = None,
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

    With an N:M ``pattern`` (e.g. "2:4") leave ``sparsity`` out: layers N:M cannot divide (the
    one-channel stem) stay dense and the report lists them. With "channel" the pruned twin is
    shrunk and both are timed. ``ramp`` defaults to half the steps, :data:`CHANNEL_RAMP` for channels."""
    target = demo_target(pattern, sparsity)  # a bad pattern or sparsity fails here, before any training
    data = load_dataset(dataset)
    if train_limit is not None:
        data = data.subset(train=train_limit)
    epochs = epochs if epochs is not None else DEFAULT_EPOCHS.get(dataset, 10)
    ramp = ramp if ramp is not None else (CHANNEL_RAMP if target.channels else 0.5)

    def config_for(total: int) -> pdprune.PruneConfig:
        return target_config(target, tau, pdprune.Schedule(total_steps=total, warmup=warmup, ramp=ramp))

    probe = config_for(100)  # a bad tau fails here, before any training
    temperature = (
        {"channel_tau": probe.pattern.tau}
        if target.channels
        else {"tau": probe.tau, "relative_tau": probe.relative_tau, "settle": probe.settle}
    )

    def settings(description: str) -> TrainSettings:
        return TrainSettings(epochs=epochs, seed=seed, progress=progress, description=description)

    dense = build_model(data.image_shape, data.num_classes, seed)
    started = time.perf_counter()
    train(dense, data, settings("dense"))
    dense_seconds = time.perf_counter() - started

    pruned = build_model(data.image_shape, data.num_classes, seed)
    started = time.perf_counter()
    example = data.x_train[:2] if target.channels else None
    pruner = train(
        pruned,
        data,
        settings(target.label),
        lambda m, total: pdprune.prepare(m, config_for(total), example_inputs=example),
    )
    report = pruner.finalize()
    latency = None
    if target.channels:
        pruner.shrink()  # the same SmallCNN class, with fewer channels
        report = pruner.report()
        latency = compare_latency(dense, pruned, data.x_test[:256])
    pruned_seconds = time.perf_counter() - started

    return ComparisonResult(
        dataset=dataset,
        train_examples=len(data.x_train),
        test_examples=len(data.x_test),
        epochs=epochs,
        seed=seed,
        sparsity=target.sparsity,
        pattern="channel" if target.channels else str(target.pattern),
        temperature=temperature,
        dense_accuracy=evaluate(dense, data.x_test, data.y_test),
        pruned_accuracy=evaluate(pruned, data.x_test, data.y_test),
        dense_params=sum(p.numel() for p in dense.parameters()),
        pruned_nonzero_params=sum(int(p.count_nonzero()) for p in pruned.parameters()),
        dense_seconds=dense_seconds,
        pruned_seconds=pruned_seconds,
        report=report,
        latency=latency,
    )

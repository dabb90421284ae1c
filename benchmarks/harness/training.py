"""The image tasks' training loop, with or without a pruner, so that dense and pruned runs differ
only in the pruner (the same recipe as `pdprune demo`'s loop, kept here so results do not move
when the demo changes)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmarks.harness.data.split import ImageSplit

__all__ = ["TrainSettings", "evaluate", "steps_per_epoch", "train"]


@dataclass(frozen=True)
class TrainSettings:
    """Optimizer and loop settings: Adam with cosine decay to zero, fixed seed."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    progress: bool = True
    description: str = "train"


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on (x, y), in [0, 1]."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(1) == y[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)


def train(
    model: nn.Module,
    data: ImageSplit,
    settings: TrainSettings,
    make_pruner: Callable[[nn.Module, int], Any] | None = None,
) -> Any:
    """Train ``model`` in place; ``make_pruner(model, total_steps)`` attaches a pruner first.

    The shuffling order depends on ``settings.seed`` alone, so runs with the same seed see the
    same batches whether or not they prune. Returns the pruner (not yet finalized), if any.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    per_epoch = steps_per_epoch(len(data.x_train), settings.batch_size)
    total = per_epoch * settings.epochs
    pruner = make_pruner(model, total) if make_pruner is not None else None
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    bar = tqdm(
        total=total, desc=settings.description, disable=not settings.progress, leave=False, unit="step"
    )
    for _ in range(settings.epochs):
        order = torch.randperm(len(data.x_train), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            loss = loss_fn(model(data.x_train[index]), data.y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if pruner is not None:
                pruner.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return pruner

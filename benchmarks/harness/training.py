"""The harness's training loop: the library's demo loop (Adam, cosine decay, fixed data order),
so every method and the dense baseline train exactly as ``pdprune demo`` does."""

from __future__ import annotations

import math

from pdprune.demo.train import TrainSettings, evaluate, train

__all__ = ["TrainSettings", "evaluate", "steps_per_epoch", "train"]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)

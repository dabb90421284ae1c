"""Measured inference latency of two models side by side: dense vs pruned, same inputs, same
threads, interleaved so that a noisy machine slows both alike; medians and their ratio."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["LatencyResult", "compare_latency"]


@dataclass(frozen=True)
class LatencyResult:
    batch: int
    threads: int
    device: str
    dtype: str
    repeats: int
    dense_ms: float  # median
    pruned_ms: float  # median
    speedup: float  # dense_ms / pruned_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        return (f"batch {self.batch}, {self.threads} threads, {self.device} {self.dtype}: dense {self.dense_ms:.2f} ms, "
                f"pruned {self.pruned_ms:.2f} ms (medians of {self.repeats}), speedup {self.speedup:.2f}x")


def _run(model: nn.Module, inputs: Any) -> None:
    if isinstance(inputs, dict):
        model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        model(*inputs)
    else:
        model(inputs)


def _time(model: nn.Module, inputs: Any, sync: bool) -> float:
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    _run(model, inputs)
    if sync:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def compare_latency(dense: nn.Module, pruned: nn.Module, inputs: Any, repeats: int = 30, warmup: int = 5) -> LatencyResult:
    """Median forward time of ``dense`` and ``pruned`` on ``inputs`` (eval mode, no autograd),
    alternating which runs first in each repeat."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    first = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values() if isinstance(inputs, dict) else inputs))
    sync = first.device.type == "cuda"
    modes = (dense.training, pruned.training)
    dense.eval(), pruned.eval()
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                _run(dense, inputs)
                _run(pruned, inputs)
            times: dict[str, list[float]] = {"dense": [], "pruned": []}
            for r in range(repeats):
                order = (("dense", dense), ("pruned", pruned)) if r % 2 == 0 else (("pruned", pruned), ("dense", dense))
                for name, model in order:
                    times[name].append(_time(model, inputs, sync))
    finally:
        dense.train(modes[0]), pruned.train(modes[1])
    dense_ms, pruned_ms = statistics.median(times["dense"]), statistics.median(times["pruned"])
    parameter = next(pruned.parameters(), None)
    return LatencyResult(
        batch=int(first.shape[0]) if first.dim() else 1,
        threads=torch.get_num_threads(),
        device=str(first.device),
        dtype=str(parameter.dtype).removeprefix("torch.") if parameter is not None else "-",
        repeats=repeats,
        dense_ms=dense_ms,
        pruned_ms=pruned_ms,
        speedup=dense_ms / pruned_ms,
    )

"""Measured inference latency of two models side by side: dense vs pruned, same inputs, same
threads, interleaved so that a noisy machine slows both alike; medians and their ratio."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["LatencyResult", "compare_latency", "compare_onnx_latency", "speed_warnings"]


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
        return (
            f"batch {self.batch}, {self.threads} threads, {self.device} {self.dtype}: dense "
            f"{self.dense_ms:.2f} ms, "
            f"pruned {self.pruned_ms:.2f} ms (medians of {self.repeats}), speedup {self.speedup:.2f}x"
        )


def _run(model: nn.Module, inputs: Any) -> None:
    if isinstance(inputs, dict):
        model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        model(*inputs)
    else:
        model(inputs)


def _run_synced(model: nn.Module, inputs: Any, sync: bool) -> None:
    """One forward, with the GPU drained before and after so the timer sees all of it."""
    if sync:
        torch.cuda.synchronize()
    _run(model, inputs)
    if sync:
        torch.cuda.synchronize()


def _interleaved_medians(run_dense: Any, run_pruned: Any, repeats: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        run_dense()
        run_pruned()
    times: dict[str, list[float]] = {"dense": [], "pruned": []}
    for r in range(repeats):
        order = (
            (("dense", run_dense), ("pruned", run_pruned))
            if r % 2 == 0
            else (("pruned", run_pruned), ("dense", run_dense))
        )
        for name, run in order:
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000)
    return statistics.median(times["dense"]), statistics.median(times["pruned"])


def compare_latency(
    dense: nn.Module, pruned: nn.Module, inputs: Any, repeats: int = 30, warmup: int = 5
) -> LatencyResult:
    """Median forward time of ``dense`` and ``pruned`` on ``inputs`` (eval mode, no autograd),
    alternating which runs first in each repeat."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    first = (
        inputs
        if isinstance(inputs, torch.Tensor)
        else next(iter(inputs.values() if isinstance(inputs, dict) else inputs))
    )
    sync = first.device.type == "cuda"
    modes = (dense.training, pruned.training)
    dense.eval(), pruned.eval()
    try:
        with torch.inference_mode():
            dense_ms, pruned_ms = _interleaved_medians(
                lambda: _run_synced(dense, inputs, sync),
                lambda: _run_synced(pruned, inputs, sync),
                repeats,
                warmup,
            )
    finally:
        dense.train(modes[0]), pruned.train(modes[1])
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


def compare_onnx_latency(
    dense_path: str | Any,
    pruned_path: str | Any,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
) -> LatencyResult:
    """Median run time of two ONNX files (e.g. :func:`pdprune.save_onnx` of a dense model and of
    its shrunk twin) in ONNX Runtime on CPU, interleaved as :func:`compare_latency` does.

    Both sessions get the same intra-op thread count (default: torch's) and ONNX Runtime's full
    graph optimisation (it folds BatchNorm into convolutions and fuses activations, as a deployed
    model would run). Needs ``pip install 'pdprune[onnx]'``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("ONNX Runtime timing needs onnxruntime: pip install 'pdprune[onnx]'") from None
    threads = threads or torch.get_num_threads()
    tensors = inputs if isinstance(inputs, tuple) else (inputs,)

    def runner(path: Any) -> Any:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        if len(names) != len(tensors):
            raise ValueError(f"{path} takes {len(names)} inputs, {len(tensors)} were given")
        feeds = {n: t.detach().cpu().contiguous().numpy() for n, t in zip(names, tensors)}
        return lambda: session.run(None, feeds)

    dense_ms, pruned_ms = _interleaved_medians(runner(dense_path), runner(pruned_path), repeats, warmup)
    first = tensors[0]
    return LatencyResult(
        batch=int(first.shape[0]) if first.dim() else 1,
        threads=threads,
        device="cpu (onnxruntime)",
        dtype=str(first.dtype).removeprefix("torch."),
        repeats=repeats,
        dense_ms=dense_ms,
        pruned_ms=pruned_ms,
        speedup=dense_ms / pruned_ms,
    )


SMALL_MS = 1.0  # below this a forward is dominated by per-operator overhead, not arithmetic


def speed_warnings(
    pattern: str, device: torch.device | str, dense_ms: float, speedup: float | None = None
) -> list[str]:
    """Why ``pattern`` may not run faster than dense on ``device``: one sentence per reason.

    PyTorch multiplies stored zeros like any other weight, so unstructured and N:M masks change
    speed only where a sparse kernel runs; channel pruning makes every layer smaller and pays
    anywhere the work is arithmetic rather than overhead.
    """
    from pdprune.patterns.specs import NM, Channels, Unstructured, parse_pattern

    device = torch.device(device)
    parsed = parse_pattern(pattern)
    notes = []
    if isinstance(parsed, Unstructured):
        notes.append(
            "unstructured zeros run on dense kernels: expect no speed-up (the gain is size: "
            "pdprune.save_sparse); use pattern='channel' for speed"
        )
    elif isinstance(parsed, NM):
        if device.type != "cuda" or (parsed.n, parsed.m) != (2, 4):
            notes.append(
                f"{parsed.n}:{parsed.m} runs on dense kernels on {device.type}: PyTorch's N:M kernels "
                "are 2:4 on CUDA GPUs (compute capability 8.0+) only; expect no speed-up here"
            )
        else:
            notes.append(
                "2:4 is measured here with dense kernels; semi-structured kernels pay only for large "
                "GEMMs and on some GPUs are slower than dense: pdprune.accelerate_2to4(model, inputs) "
                "times each 2:4 Linear both ways and makes it sparse only where that is faster"
            )
    if isinstance(parsed, Channels) and dense_ms < SMALL_MS:
        notes.append(
            f"the dense forward takes {dense_ms:.2f} ms: per-operator overhead dominates, so fewer "
            "channels save little; larger batches or inputs show the real gain"
        )
    if speedup is not None and speedup < 1.0 / 1.05 and isinstance(parsed, Channels):
        notes.append(
            f"the pruned model is slower ({speedup:.2f}x): odd widths can fall off the fast kernels "
            "(try Channels(round_to=8)) or the measurement is noisy (more repeats)"
        )
    return notes

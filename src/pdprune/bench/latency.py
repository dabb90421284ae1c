"""`pdprune bench latency`: dense vs pruned inference time on this machine, for each pattern.

The model is a built-in one or your own (``MODULE:CALLABLE``, a factory returning an nn.Module).
It is pruned at initialisation (latency depends on shapes and zeros, not on trained values),
hardened, and for channel pruning physically shrunk; dense and pruned then run side by side,
interleaved, for each batch size. Every row carries the warnings that say where a pattern cannot be
faster on this device, so a 1.0x is explained rather than left as a surprise.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import pdprune
from pdprune.io import atomic_write_json, atomic_write_text, ensure_writable_folder
from pdprune.latency import compare_latency, speed_warnings
from pdprune.machine import git_commit, machine_info
from pdprune.patterns import parse_pattern

__all__ = [
    "LATENCY_MODELS",
    "LatencyModel",
    "load_model_factory",
    "parse_input_shape",
    "run_latency_benchmark",
]


@dataclass(frozen=True)
class LatencyModel:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # one input batch; its first dimension is replaced by each batch size


def _small_cnn() -> nn.Module:
    from pdprune.demo.model import SmallCNN

    return SmallCNN()


# The models the library ships; reference models such as ResNet-18 live in the repository's
# benchmarks/ and are reached like any other: --model benchmarks.harness.models:ResNet18.
BUILT_IN: dict[str, LatencyModel] = {"small-cnn": LatencyModel(_small_cnn, (1, 1, 28, 28))}
LATENCY_MODELS = tuple(BUILT_IN)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_input_shape(text: str) -> tuple[int, ...]:
    """ "1,3,224,224" -> (1, 3, 224, 224): positive sizes, the first one the batch."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(
            f"input shape must be sizes separated by commas, e.g. 1,3,224,224, got {text!r}"
        ) from None
    if len(shape) < 2 or any(size < 1 for size in shape):
        raise ValueError(
            "input shape needs a batch size and at least one more positive size, e.g. 1,3,224,224, got "
            f"{text!r}"
        )
    return shape


def load_model_factory(spec: str) -> Callable[[], nn.Module]:
    """The callable named by ``MODULE:CALLABLE`` (e.g. ``mypackage.models:make_model``), imported
    from the working directory or the installed packages."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(
            f"unknown model {spec!r}: give a built-in name ({', '.join(LATENCY_MODELS)}) or "
            f"MODULE:CALLABLE, a factory that returns an nn.Module (e.g. benchmarks.harness.models:ResNet18)"
        )
    if os.getcwd() not in sys.path:  # the console script's path does not hold the working directory
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"--model {spec}: cannot import {module_name!r} ({error})") from None
    for name in attribute.split("."):
        if not hasattr(target, name):
            raise ValueError(f"--model {spec}: {module_name} has no {attribute!r}")
        target = getattr(target, name)
    if not callable(target):
        raise TypeError(f"--model {spec}: {attribute} is not callable")
    return target


def _resolve(model: str, input_shape: Sequence[int] | None) -> LatencyModel:
    if model in BUILT_IN:
        spec = BUILT_IN[model]
        return spec if input_shape is None else LatencyModel(spec.build, tuple(input_shape))
    factory = load_model_factory(model)
    if input_shape is None:
        raise ValueError(f"--model {model}: give --input-shape, one batch of its input, e.g. 1,3,224,224")
    return LatencyModel(factory, tuple(input_shape))


def _config(pattern: str | pdprune.NM | pdprune.Channels, sparsity: float) -> pdprune.PruneConfig:
    """Pruned in one step, passing only the settings that apply to the pattern."""
    schedule = pdprune.Schedule(1, warmup=0, ramp=0)
    if isinstance(pattern, pdprune.Channels):
        return pdprune.PruneConfig(
            sparsity=sparsity, pattern=pdprune.Channels(unit="flops", round_to=8), schedule=schedule
        )
    if isinstance(pattern, pdprune.NM):
        return pdprune.PruneConfig(pattern=pattern, schedule=schedule, indivisible="dense")
    return pdprune.PruneConfig(sparsity=sparsity, schedule=schedule)


def _pruned_twin(
    dense: nn.Module, pattern: str, sparsity: float, example: torch.Tensor
) -> tuple[nn.Module, dict]:
    """A copy of ``dense`` pruned to ``pattern`` at initialisation, hardened (and shrunk for channels)."""
    pruned = copy.deepcopy(dense)
    parsed = parse_pattern(pattern)
    channels = isinstance(parsed, pdprune.Channels)
    pruner = pdprune.prepare(pruned, _config(parsed, sparsity), example_inputs=example if channels else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hardening at step 0 is the point: shapes, not accuracy
        pruner.finalize()
    if channels:
        pruner.shrink()
    report = pruner.report()
    info: dict[str, Any] = {"achieved_sparsity": report.achieved_sparsity}
    if channels:
        info |= {"unit": "flops", "params": list(report.params), "macs_per_example": list(report.macs)}
    return pruned.eval(), info


def run_latency_benchmark(
    model: str = "small-cnn",
    patterns: tuple[str, ...] = ("unstructured", "2:4", "channel"),
    sparsity: float = 0.5,
    batches: tuple[int, ...] = (1, 32),
    device: str = "cpu",
    dtype: str = "float32",
    threads: int | None = None,
    channels_last: bool = True,
    repeats: int = 20,
    out: Path | None = None,
    tag: str | None = None,
    input_shape: Sequence[int] | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure dense vs pruned for each pattern and batch size; write latency_<tag>.json/.md to
    ``out`` if given. ``model`` is a built-in name or ``MODULE:CALLABLE``; ``input_shape`` is one
    batch of its (float) input, whose first dimension each of ``batches`` replaces. ``sparsity`` is
    the unstructured sparsity and the channel FLOPs fraction. ``command`` is recorded in the files."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but torch sees no CUDA GPU: use --device cpu")
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    if any(b < 1 for b in batches):
        raise ValueError(f"batch sizes must be positive, got {list(batches)}")
    for p in patterns:
        parse_pattern(p)  # a clear error before anything runs
    spec = _resolve(model, input_shape)
    if threads is not None:
        torch.set_num_threads(threads)
    example_shape = spec.input_shape[1:]  # one example, without the batch dimension
    layout = torch.channels_last if channels_last and len(example_shape) == 3 else torch.contiguous_format
    torch.manual_seed(0)
    dense = spec.build()
    if not isinstance(dense, nn.Module):
        raise TypeError(f"--model {model} returned a {type(dense).__name__}, not an nn.Module")
    dense.eval()
    example = torch.randn(1, *example_shape)
    started = time.time()
    rows = []
    for pattern in patterns:
        pruned, info = _pruned_twin(dense, pattern, sparsity, example)
        pair = [m.to(device=device, dtype=DTYPES[dtype], memory_format=layout) for m in (dense, pruned)]
        for batch in batches:
            x = torch.randn(batch, *example_shape).to(
                device=device, dtype=DTYPES[dtype], memory_format=layout
            )
            result = compare_latency(*pair, x, repeats=repeats, warmup=3)
            notes = speed_warnings(pattern, torch.device(device), result.dense_ms, result.speedup)
            rows.append({"model": model, "pattern": pattern, **info, **result.to_dict(), "warnings": notes})
            log(f"{model} {pattern}: {result.to_text()}")
            for note in notes:
                log(f"  warning: {note}")
    payload = {
        "benchmark": "inference latency, dense vs pruned",
        "command": command,
        "commit": git_commit(),  # of the working directory's repository, if any
        "pdprune": pdprune.__version__,
        "machine": machine_info(),
        "model": model,
        "input_shape": list(example_shape),
        "memory_format": "channels_last" if layout is torch.channels_last else "contiguous",
        "note": (
            "Pruned at initialisation and hardened (channel: widths rounded to 8, shrunk): latency depends "
            "on shapes and zeros only. Medians of interleaved runs in one process."
        ),
        "rows": rows,
        "wall_seconds": time.time() - started,
    }
    if out is not None:
        ensure_writable_folder(out)
        name = re.sub(r"[^\w.-]+", "-", model.rpartition(":")[2])  # MODULE:CALLABLE -> CALLABLE
        stem = Path(out) / f"latency_{tag or f'{name}-{device}'}"
        atomic_write_json(stem.with_suffix(".json"), payload)
        atomic_write_text(stem.with_suffix(".md"), _markdown(payload))
        payload["written"] = [str(stem.with_suffix(".json")), str(stem.with_suffix(".md"))]
    return payload


def _markdown(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    lines = [
        (
            f"# Latency, dense vs pruned: {payload['model']} ({'x'.join(map(str, payload['input_shape']))}, "
            f"{payload['memory_format']})"
        ),
        "",
        *([f"Command: `{payload['command']}`  "] if payload.get("command") else []),
        f"Commit: {payload['commit']} (pdprune {payload['pdprune']})  ",
        (
            f"Machine: {m['cpu']} ({m['torch_threads']} torch "
            f"threads){', ' + m['gpu'] if 'gpu' in m else ''}, "
            f"torch {m['torch']}. {payload['note']}"
        ),
        "",
        "| pattern | sparsity | batch | device | dtype | dense ms | pruned ms | speedup | warnings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['pattern']} | {r['achieved_sparsity']:.1%} | {r['batch']} | {r['device']} | {r['dtype']} "
            "| "
            f"{r['dense_ms']:.2f} | {r['pruned_ms']:.2f} | {r['speedup']:.2f}x | "
            f"{'; '.join(r['warnings']) or '-'} |"
        )
    return "\n".join(lines) + "\n"

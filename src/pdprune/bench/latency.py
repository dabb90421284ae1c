"""`pdprune bench latency`: dense vs pruned inference time on this machine, for each pattern.

A reference model is pruned at initialisation (latency depends on shapes and zeros, not on
trained values), hardened, and for channel pruning physically shrunk; dense and pruned then run
side by side, interleaved, for each batch size. Every row carries the warnings that say where a
pattern cannot be faster on this device, so a 1.0x is explained rather than left as a surprise.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import pdprune
from pdprune.io import atomic_write_json, atomic_write_text, ensure_writable_folder
from pdprune.latency import compare_latency, speed_warnings
from pdprune.machine import machine_info
from pdprune.pattern import NM, Channels, parse_pattern

__all__ = ["LATENCY_MODELS", "LatencyModel", "run_latency_benchmark"]


@dataclass(frozen=True)
class LatencyModel:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # one example, without the batch dimension


def _models() -> dict[str, LatencyModel]:
    from pdprune.models import MobileNetV2, ResNet18, SmallCNN, SmallMobileNetV2, SmallResNet

    return {
        "resnet18": LatencyModel(ResNet18, (3, 224, 224)),
        "mobilenetv2": LatencyModel(MobileNetV2, (3, 224, 224)),
        "small-resnet": LatencyModel(SmallResNet, (1, 28, 28)),
        "small-mobilenetv2": LatencyModel(SmallMobileNetV2, (1, 28, 28)),
        "small-cnn": LatencyModel(SmallCNN, (1, 28, 28)),
    }


LATENCY_MODELS = ("resnet18", "mobilenetv2", "small-resnet", "small-mobilenetv2", "small-cnn")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _pruned_twin(dense: nn.Module, pattern: str, sparsity: float, example: torch.Tensor) -> tuple[nn.Module, dict]:
    """A copy of ``dense`` pruned to ``pattern`` at initialisation, hardened (and shrunk for channels)."""
    pruned = copy.deepcopy(dense)
    parsed = parse_pattern(pattern)
    schedule = pdprune.Schedule(1, warmup=0, ramp=0)
    if isinstance(parsed, Channels):
        config = pdprune.PruneConfig(sparsity=sparsity, pattern=pdprune.Channels(unit="flops", round_to=8),
                                     schedule=schedule)
        pruner = pdprune.prepare(pruned, config, example_inputs=example)
    elif isinstance(parsed, NM):
        config = pdprune.PruneConfig(pattern=parsed, schedule=schedule, indivisible="dense")
        pruner = pdprune.prepare(pruned, config)
    else:
        pruner = pdprune.prepare(pruned, pdprune.PruneConfig(sparsity=sparsity, schedule=schedule))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hardening at step 0 is the point: shapes, not accuracy
        pruner.finalize()
    if isinstance(parsed, Channels):
        pruner.shrink()
    report = pruner.report()
    info: dict[str, Any] = {"achieved_sparsity": report.achieved_sparsity}
    if isinstance(parsed, Channels):
        info |= {"unit": "flops", "params": list(report.params), "macs_per_example": list(report.macs)}
    return pruned.eval(), info


def run_latency_benchmark(
    model: str = "resnet18",
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
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure dense vs pruned for each pattern and batch size; write latency_<tag>.json/.md to
    ``out`` if given. ``sparsity`` is the unstructured sparsity and the channel FLOPs fraction."""
    if model not in LATENCY_MODELS:
        raise ValueError(f"unknown model {model!r}: choose one of {', '.join(LATENCY_MODELS)}")
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
    if threads is not None:
        torch.set_num_threads(threads)
    spec = _models()[model]
    layout = torch.channels_last if channels_last and len(spec.input_shape) == 3 else torch.contiguous_format
    torch.manual_seed(0)
    dense = spec.build().eval()
    example = torch.randn(1, *spec.input_shape)
    started = time.time()
    rows = []
    for pattern in patterns:
        pruned, info = _pruned_twin(dense, pattern, sparsity, example)
        pair = [m.to(device=device, dtype=DTYPES[dtype], memory_format=layout) for m in (dense, pruned)]
        for batch in batches:
            x = torch.randn(batch, *spec.input_shape).to(device=device, dtype=DTYPES[dtype], memory_format=layout)
            result = compare_latency(*pair, x, repeats=repeats, warmup=3)
            notes = speed_warnings(pattern, torch.device(device), result.dense_ms, result.speedup)
            row = {"model": model, "pattern": pattern, **info, **result.to_dict(), "warnings": notes}
            rows.append(row)
            log(f"{model} {pattern}: {result.to_text()}")
            for note in notes:
                log(f"  warning: {note}")
    payload = {
        "benchmark": "inference latency, dense vs pruned",
        "machine": machine_info(),
        "model": model,
        "input_shape": list(spec.input_shape),
        "memory_format": "channels_last" if layout is torch.channels_last else "contiguous",
        "note": "Pruned at initialisation and hardened (channel: widths rounded to 8, shrunk): latency depends on "
                "shapes and zeros only. Medians of interleaved runs in one process.",
        "rows": rows,
        "wall_seconds": time.time() - started,
    }
    if out is not None:
        ensure_writable_folder(out)
        stem = Path(out) / f"latency_{tag or f'{model}-{device}'}"
        atomic_write_json(stem.with_suffix(".json"), payload)
        atomic_write_text(stem.with_suffix(".md"), _markdown(payload))
        payload["written"] = [str(stem.with_suffix(".json")), str(stem.with_suffix(".md"))]
    return payload


def _markdown(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    lines = [
        f"# Latency, dense vs pruned: {payload['model']} ({'x'.join(map(str, payload['input_shape']))}, "
        f"{payload['memory_format']})",
        "",
        f"Machine: {m['cpu']} ({m['torch_threads']} torch threads){', ' + m['gpu'] if 'gpu' in m else ''}, "
        f"torch {m['torch']}. {payload['note']}",
        "",
        "| pattern | sparsity | batch | device | dtype | dense ms | pruned ms | speedup | warnings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        lines.append(f"| {r['pattern']} | {r['achieved_sparsity']:.1%} | {r['batch']} | {r['device']} | {r['dtype']} | "
                     f"{r['dense_ms']:.2f} | {r['pruned_ms']:.2f} | {r['speedup']:.2f}x | "
                     f"{'; '.join(r['warnings']) or '-'} |")
    return "\n".join(lines) + "\n"

"""2:4 Linear layers on sparse tensor cores, only where they are faster than dense.

PyTorch's semi-structured sparse kernels (cuSPARSELt or CUTLASS) pay only for large GEMMs and on
some GPUs are slower than dense at every shape (see the semi-structured GEMM benchmark). So each 2:4
Linear layer is timed both ways at the shape it actually sees (captured from the example inputs),
and its weight becomes a semi-structured sparse tensor only if that is at least ``min_speedup``
faster; the others keep their dense weights, and the returned decisions say which and why. Inference
only: the sparse weights do not train.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["LayerDecision", "accelerate_2to4", "choose_sparse", "is_2to4"]


@dataclass(frozen=True)
class LayerDecision:
    """One Linear layer: its GEMM shape, both timings and whether it went sparse."""

    name: str
    tokens: int  # rows of the GEMM: every input dimension but the last
    in_features: int
    out_features: int
    dense_ms: float | None
    sparse_ms: float | None
    sparse: bool
    reason: str

    @property
    def speedup(self) -> float | None:
        return self.dense_ms / self.sparse_ms if self.dense_ms and self.sparse_ms else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"speedup": self.speedup}


def is_2to4(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive weights along the input dimension has at most 2 nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool((weight.detach().ne(0).view(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def choose_sparse(dense_ms: float, sparse_ms: float, min_speedup: float) -> tuple[bool, str]:
    """The rule: sparse only when it is at least ``min_speedup`` times faster than dense."""
    ratio = dense_ms / sparse_ms
    if ratio >= min_speedup:
        return True, f"sparse kernel {ratio:.2f}x faster than dense"
    return False, f"kept dense: the sparse kernel ran at {ratio:.2f}x of dense (needs >= {min_speedup:g}x)"


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def accelerate_2to4(
    model: nn.Module,
    example_inputs: Any,
    min_speedup: float = 1.05,
    repeats: int = 20,
    layers: Sequence[str] | None = None,
    tolerance: float = 1e-2,
) -> list[LayerDecision]:
    """Give the 2:4 Linear layers of ``model`` (on a CUDA GPU, eval mode) semi-structured sparse
    weights where that is at least ``min_speedup`` faster at the shapes ``example_inputs`` produce.

    ``layers`` limits the candidates by name. The model's outputs are compared before and after;
    a change beyond ``tolerance`` (relative to the largest output) undoes every swap and raises.
    Returns one decision per 2:4 Linear layer, in model order.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(
            "2:4 sparse kernels run only on CUDA GPUs (compute capability 8.0 or newer); this model is on "
            f"{device}. "
            f"On a CPU keep the dense weights (the zeros still shrink the file: pdprune.save_sparse)."
        )
    if torch.cuda.get_device_capability(device) < (8, 0):
        raise RuntimeError(
            f"{torch.cuda.get_device_name(device)} has no sparse tensor cores (compute capability "
            f"{torch.cuda.get_device_capability(device)} < 8.0); keep the dense weights"
        )
    if min_speedup <= 0:
        raise ValueError(f"min_speedup must be > 0, got {min_speedup}")
    candidates = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and (layers is None or name in layers) and is_2to4(m.weight)
    }
    if not candidates:
        raise ValueError(
            "no Linear layer of this model holds a 2:4 pattern; prune with pattern='2:4' and finalize() first"
        )
    shapes: dict[str, torch.Size] = {}
    handles = [
        m.register_forward_hook(lambda mod, args, out, name=name: shapes.setdefault(name, args[0].shape))
        for name, m in candidates.items()
    ]
    was_training = model.training
    model.eval()
    try:
        try:
            with torch.no_grad():
                expected = _call(model, example_inputs)
        finally:
            for h in handles:
                h.remove()
        return _swap(
            model, candidates, shapes, expected, example_inputs, device, min_speedup, repeats, tolerance
        )
    finally:
        model.train(was_training)


def _swap(
    model: nn.Module,
    candidates: dict[str, nn.Linear],
    shapes: dict[str, torch.Size],
    expected: Any,
    example_inputs: Any,
    device: torch.device,
    min_speedup: float,
    repeats: int,
    tolerance: float,
) -> list[LayerDecision]:
    from torch.sparse import to_sparse_semi_structured

    decisions: list[LayerDecision] = []
    swapped: dict[str, nn.Parameter] = {}
    with torch.no_grad():
        for name, layer in candidates.items():
            shape = shapes.get(name)
            tokens = int(torch.Size(shape[:-1]).numel()) if shape is not None else 0
            entry = {
                "name": name,
                "tokens": tokens,
                "in_features": layer.in_features,
                "out_features": layer.out_features,
            }
            if shape is None:
                decisions.append(
                    LayerDecision(
                        **entry,
                        dense_ms=None,
                        sparse_ms=None,
                        sparse=False,
                        reason="kept dense: the example inputs never ran this layer",
                    )
                )
                continue
            x = torch.randn(tokens, layer.in_features, device=device, dtype=layer.weight.dtype)
            try:
                sparse_weight = to_sparse_semi_structured(layer.weight.detach())
                dense_ms = _median_ms(
                    lambda x=x, layer=layer: nn.functional.linear(x, layer.weight, layer.bias), repeats
                )
                sparse_ms = _median_ms(
                    lambda x=x, w=sparse_weight, layer=layer: nn.functional.linear(x, w, layer.bias), repeats
                )
            except (RuntimeError, ValueError, NotImplementedError) as error:  # shape/dtype the kernels refuse
                decisions.append(
                    LayerDecision(
                        **entry,
                        dense_ms=None,
                        sparse_ms=None,
                        sparse=False,
                        reason=f"kept dense: the sparse kernel refused it ({str(error)[:160]})",
                    )
                )
                continue
            use, reason = choose_sparse(dense_ms, sparse_ms, min_speedup)
            if use:
                swapped[name] = layer.weight
                layer.weight = nn.Parameter(sparse_weight, requires_grad=False)
            decisions.append(
                LayerDecision(**entry, dense_ms=dense_ms, sparse_ms=sparse_ms, sparse=use, reason=reason)
            )
        if swapped:
            try:
                actual = _call(model, example_inputs)
                worst = _worst_relative_error(expected, actual)
            except Exception:
                _restore(candidates, swapped)
                raise
            if not worst <= tolerance:  # NaN fails too
                _restore(candidates, swapped)
                raise RuntimeError(
                    f"with sparse weights the outputs changed by {worst:.2e} (relative), above "
                    f"{tolerance:g}; every layer was set back to its dense weight"
                )
    return decisions


def _restore(candidates: dict[str, nn.Linear], swapped: dict[str, nn.Parameter]) -> None:
    for name, weight in swapped.items():
        candidates[name].weight = weight


def _worst_relative_error(expected: Any, actual: Any) -> float:
    """The largest |expected - actual| over each output's largest |expected|; NaN if any output is
    not finite or the outputs do not match up."""
    pairs = list(zip(_tensors(expected), _tensors(actual)))
    if len(pairs) != len(_tensors(expected)) or any(e.shape != a.shape for e, a in pairs):
        return float("nan")
    worst = 0.0
    for e, a in pairs:
        e, a = e.float(), a.float()
        if not bool(torch.isfinite(a).all()):
            return float("nan")
        worst = max(worst, float((e - a).abs().max() / e.abs().max().clamp(min=1e-12)))
    return worst


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return [t for v in getattr(value, "__dict__", {}).values() for t in _tensors(v)]

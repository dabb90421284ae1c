"""Fused kernels for PDP's soft-masked weight, compiled once with torch.compile.

Eager PyTorch runs the mask as a chain of elementwise ops, each one a pass over the weights (4 in
forward, 6 in backward, 3 for the kept count); torch.compile fuses each chain into one loop, which
is what makes PDP's step close to a dense one on large layers (benchmarks/step_cost.py). Two more
serve the exact threshold search near last step's t: counts above six edges in one pass, and
the indicator of the band between two of them.
``kernels_for`` picks them for large tensors when the compiler works on the device (checked once
per device and dtype against the eager kernels), and says so in a warning when it does not; the
results are the same up to float rounding either way.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch

from pdprune.functional.masks import (
    EAGER_KERNELS,
    LOGIT_FLOOR,
    MaskKernels,
    band_edges,
    count_above_eager,
    masked_backward_eager,
    masked_forward_eager,
)

__all__ = ["MIN_FUSED_NUMEL", "KernelChoice", "fused_kernels", "kernels_for"]

KernelChoice = Literal["auto", "fused", "eager"]
KERNEL_CHOICES: tuple[str, ...] = ("auto", "fused", "eager")

# Below this many weights a layer's mask costs microseconds either way, and "auto" keeps the eager
# kernels, so small models never wait for a compiler.
MIN_FUSED_NUMEL = 1 << 18

_FLOAT32_MAX = torch.finfo(torch.float32).max


def _mask(weight32: torch.Tensor, t: torch.Tensor, inv_tau: torch.Tensor) -> torch.Tensor:
    # (w^2 - t^2) / tau with -t^2 / tau clamped to the float32 range, as in the eager kernels:
    # huge t or w never give inf - inf.
    offset = (-(t * t) * inv_tau).clamp(min=-_FLOAT32_MAX)
    logit = weight32 * weight32 * inv_tau + offset
    return torch.where(logit > LOGIT_FLOOR, torch.sigmoid(logit), 0.0)


def _forward(weight: torch.Tensor, t: torch.Tensor, inv_tau: torch.Tensor) -> torch.Tensor:
    weight32 = weight.float()
    return (_mask(weight32, t, inv_tau) * weight32).to(weight.dtype)


def _backward(
    weight: torch.Tensor, t: torch.Tensor, inv_tau: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    weight32 = weight.float()
    mask = _mask(weight32, t, inv_tau)
    # m (1 - m) w first, then times w: 0 where m saturates, so never 0 * inf (as in eager).
    slope = (mask - mask * mask) * weight32
    return ((mask + 2.0 * inv_tau * slope * weight32) * grad.float()).to(weight.dtype)


def _count(weight: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    magnitude = weight.abs().float()
    return (magnitude > t).sum(), torch.isfinite(magnitude).all()


def _counts_above(weight: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Six sums written out (not one broadcast compare) so the compiler fuses them into one loop.
    magnitude = weight.abs().float()
    counts = [(magnitude > edges[i]).sum() for i in range(6)]
    return torch.stack(counts), torch.isfinite(magnitude).all()


def _in_band(weight: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    magnitude = weight.abs().float()
    # uint8, not bool: the compiled loop stores bytes several times faster than booleans.
    return ((magnitude > low) & (magnitude <= high)).to(torch.uint8)


_compiled: dict[str, Any] = {}

# Graphs per kernel: weight dtypes (float32, bfloat16, float16) times a scalar or per-weight t.
_RECOMPILE_LIMIT = 16


def _compiled_function(name: str) -> Any:
    if name not in _compiled:
        source = {
            "forward": _forward,
            "backward": _backward,
            "count": _count,
            "counts_above": _counts_above,
            "in_band": _in_band,
        }[name]
        _compiled[name] = torch.compile(source, dynamic=True, fullgraph=True)
    return _compiled[name]


def _call(name: str, *args: torch.Tensor) -> Any:
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
        return _compiled_function(name)(*args)


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor over the same memory (a contiguous copy if needed), not a view of ``tensor``.

    One graph serves every layer shape, as the kernels are elementwise. It must not be a view:
    torch.compile guards on a view's base, and would compile again for each base shape.
    """
    if tensor.dim() == 0:
        return tensor
    tensor = tensor.detach().contiguous()
    flat = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return flat.set_(tensor.untyped_storage(), tensor.storage_offset(), (tensor.numel(),), (1,))


def _inverse(tau: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(tau, torch.Tensor):
        return (1.0 / tau).reshape(()).to(dtype=torch.float32, device=like.device)
    return torch.full((), 1.0 / tau, dtype=torch.float32, device=like.device)


def _warn_and_fall_back(name: str, error: Exception) -> None:
    key = ("call", name)
    if key not in _warned:
        _warned.add(key)  # type: ignore[arg-type]
        warnings.warn(
            f"pdprune: the fused {name} kernel failed ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); this call and later "
            "failing "
            f"ones run the eager kernels: same results, slower steps.",
            RuntimeWarning,
            stacklevel=3,
        )


class FusedSoftMaskedWeight(torch.autograd.Function):
    """:class:`pdprune.functional.SoftMaskedWeight` with one fused loop forward and one backward."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, t: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight, t)
        ctx.tau = tau
        try:
            out = _call("forward", _flat(weight), _flat(t), _inverse(tau, t))
        except Exception as error:  # e.g. a dtype that exceeds the graphs compiled so far
            _warn_and_fall_back("forward", error)
            return masked_forward_eager(weight, t, tau)
        return out.view(weight.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        weight, t = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        try:
            out = _call("backward", _flat(weight), _flat(t), _inverse(ctx.tau, t), _flat(grad))
        except Exception as error:
            _warn_and_fall_back("backward", error)
            return masked_backward_eager(weight, t, ctx.tau, grad), None, None
        return out.view(weight.shape), None, None


def _fused_count(weight: torch.Tensor, t: torch.Tensor) -> tuple[int, bool]:
    try:
        above, finite = _call("count", _flat(weight.detach()), t)
    except Exception as error:
        _warn_and_fall_back("count", error)
        return count_above_eager(weight, t)
    return int(above), bool(finite)


def _fused_counts_above(weight: torch.Tensor, edges: torch.Tensor) -> tuple[list[int], bool] | None:
    if edges.numel() != 6:
        return None
    try:
        counts, finite = _call("counts_above", _flat(weight.detach()), edges)
    except Exception as error:
        _warn_and_fall_back("counts_above", error)
        return None  # the threshold search takes its eager path
    return [int(c) for c in counts.tolist()], bool(finite)


def _fused_in_band(weight: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor | None:
    try:
        return _call("in_band", _flat(weight.detach()), low, high)
    except Exception as error:
        _warn_and_fall_back("in_band", error)
        return None


def fused_kernels() -> MaskKernels:
    """The fused kernels (compiled at their first call)."""
    return MaskKernels("fused", FusedSoftMaskedWeight, _fused_count, _fused_counts_above, _fused_in_band)


_checked: dict[tuple[str, torch.dtype], str | None] = {}  # (device type, dtype) -> None or why not
_warned: set[tuple[str, Any]] = set()


def _self_check(device: torch.device, dtype: torch.dtype) -> str | None:
    """Compile the fused kernels and compare them with the eager ones; None if they agree."""
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(64, 96, generator=generator) * 0.05).to(device=device, dtype=dtype)
    weight[0, :4] = torch.tensor([0.0, 1e-30, 3.0, -3.0], dtype=dtype)
    grad = torch.randn(64, 96, generator=generator).to(device=device, dtype=dtype)
    t = weight.abs().float().flatten().kthvalue(weight.numel() // 2).values
    tau = 1e-4
    fused, eager = fused_kernels(), EAGER_KERNELS
    try:
        outputs = []
        for kernels in (fused, eager):
            w = weight.clone().requires_grad_(True)
            out = kernels.function.apply(w, t, tau)
            out.backward(grad)
            outputs.append((out.detach().float(), w.grad.float(), kernels.count(weight, t)))
    except Exception as error:  # a missing compiler or backend surfaces as many exception types
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    try:  # the exact threshold's band search: compiled counts and band against the eager ones
        edges = band_edges(float(t), weight.device)
        counted = fused.counts_above(weight, edges)  # type: ignore[misc]
        magnitude = weight.abs().float().flatten()
        if counted is None or counted[0] != [int((magnitude > e).sum()) for e in edges] or not counted[1]:
            return "the compiled band counts disagree with the eager ones"
        marks = fused.in_band(weight, edges[4], edges[1])  # type: ignore[misc]
        if marks is None or not torch.equal(marks.bool(), (magnitude > edges[4]) & (magnitude <= edges[1])):
            return "the compiled band indicator disagrees with the eager one"
    except Exception as error:
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    (out_f, grad_f, count_f), (out_e, grad_e, count_e) = outputs
    rtol = 1e-5 if dtype == torch.float32 else 1e-2
    if not torch.allclose(out_f, out_e, rtol=rtol, atol=1e-6) or not torch.allclose(
        grad_f, grad_e, rtol=rtol, atol=1e-4
    ):
        return "the compiled kernels disagree with the eager ones beyond float rounding"
    if count_f != count_e:
        return f"the compiled kept count {count_f} disagrees with the eager one {count_e}"
    return None


def kernels_for(weight: torch.Tensor, choice: KernelChoice = "auto") -> MaskKernels:
    """The kernels a PDP layer with ``weight`` uses.

    "eager": never compiled. "fused": compiled for every layer; an error if the compiler fails on
    this device. "auto": fused for tensors of at least :data:`MIN_FUSED_NUMEL` weights when the
    compiler works here, otherwise eager with one warning naming the reason. Inside a graph that
    torch.compile is tracing, the eager ops are returned: the outer compiler fuses them itself.
    """
    if choice == "eager" or torch.compiler.is_compiling():
        return EAGER_KERNELS
    if choice == "auto" and weight.numel() < MIN_FUSED_NUMEL:
        return EAGER_KERNELS
    key = (weight.device.type, weight.dtype)
    if key not in _checked:
        _checked[key] = _self_check(weight.device, weight.dtype)
    reason = _checked[key]
    if reason is None:
        return fused_kernels()
    if choice == "fused":
        raise RuntimeError(
            f"PDP(kernels='fused'): the fused mask kernels do not work on {weight.device.type} for "
            f"{weight.dtype} ({reason}). torch.compile needs a C++ compiler on CPU and Triton on GPU; "
            f"use PDP(kernels='eager') (same results, slower steps) or PDP(kernels='auto')."
        )
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"pdprune: fused mask kernels are unavailable on {weight.device.type} for {weight.dtype} "
            f"({reason}); using the eager kernels: same results, slower training steps. Pass "
            f"PDP(kernels='eager') to choose them explicitly.",
            RuntimeWarning,
            stacklevel=2,
        )
    return EAGER_KERNELS

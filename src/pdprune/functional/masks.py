"""PDP's mask maths for unstructured sparsity: pure functions on tensors, no modules, no state.

Conventions: ``sparsity`` r is the fraction of a tensor's elements removed; ``keep_count`` is how
many survive. Squares, thresholds and masks are computed in float32 whatever the weight dtype, so
fp16/bf16 weights never overflow or lose the comparison against the threshold.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pdprune.functional.select import top_magnitude_mask

__all__ = [
    "EAGER_KERNELS",
    "MaskKernels",
    "SoftMaskedWeight",
    "check_finite",
    "check_sparsity",
    "check_tau",
    "count_above_eager",
    "hard_mask",
    "keep_count",
    "masked_backward_eager",
    "masked_forward_eager",
    "midpoint_threshold",
    "relative_temperature",
    "soft_mask",
    "soft_masked_weight",
    "threshold_by_counts",
]


def _as_real(value: object, what: str) -> float:
    # Python, numpy and 0-d torch numbers are accepted and stored as a plain float, so reports and
    # checkpoints hold plain values; strings and bools are rejected rather than guessed at.
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


LOGIT_FLOOR = -50.0  # sigmoid(-50) = 1.9e-22


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Return ``sparsity`` as a float after checking it lies in [0, 1)."""
    value = _as_real(sparsity, what)
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise ValueError(
            f"{what} must be in [0, 1), got {sparsity!r}: it is the fraction of weights removed "
            f"(0.9 keeps one weight in ten); 1.0 would remove every weight."
        )
    return value


def check_tau(tau: float, what: str = "tau") -> float:
    """Return ``tau`` as a float after checking it is a finite positive number."""
    value = _as_real(tau, what)
    if not (value > 0.0 and value != float("inf")):
        raise ValueError(
            f"{what} must be a finite number > 0, got {tau!r}: it is the mask temperature in units "
            f"of squared weights (1e-4 is the usual value); small values give a harder mask."
        )
    return value


# The smallest mean squared weight a relative temperature scales (an all-zero layer): its mask
# is then sharp, and no division meets 0.
_MIN_MEAN_SQUARE = 1e-30


def relative_temperature(weight: torch.Tensor, relative_tau: float) -> torch.Tensor:
    """tau = ``relative_tau`` * mean(w^2), as a 0-d float32 tensor on the weight's device (no sync).

    Measured once, when pruning starts, it puts every layer's temperature in units of its own
    weights' scale: m = sigmoid((w^2 - t^2) / tau) then depends on w only through w / rms(w), so
    layers of large and small weights get the same mask shape and the same gradient gain at the
    cut (t^2 / (2 tau), which grows with the sparsity as in the paper, where tau is fixed).
    """
    w = weight.detach().float()
    square = (w * w).mean().clamp(min=_MIN_MEAN_SQUARE, max=torch.finfo(torch.float32).max)
    return (square * relative_tau).clamp(max=torch.finfo(torch.float32).max)


def check_finite(weight: torch.Tensor, name: str = "weight") -> None:
    """Raise a clear error if ``weight`` holds NaN or infinite values."""
    if not bool(torch.isfinite(weight).all()):
        raise nonfinite_error(name, int((~torch.isfinite(weight)).sum()))


def nonfinite_error(name: str, count: int) -> FloatingPointError:
    """The error for a weight tensor that holds ``count`` NaN or infinite values."""
    return FloatingPointError(
        f"{name} holds {count} NaN or infinite value(s), so no pruning threshold can be taken. "
        f"Training has diverged before this point: lower the learning rate, enable gradient "
        f"clipping, or check the inputs and loss for NaN."
    )


def keep_count(numel: int, sparsity: float) -> int:
    """Number of elements kept at ``sparsity``: round((1 - r) * n), at least one while r < 1."""
    if numel <= 0:
        raise ValueError(f"cannot prune an empty tensor (numel={numel})")
    r = check_sparsity(sparsity)
    if r == 0.0:
        return numel
    return min(numel, max(1, round((1.0 - r) * numel)))


def _magnitudes_f32(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(-1).abs().float()


def midpoint_threshold(
    weight: torch.Tensor,
    sparsity: float,
    *,
    check: bool = True,
    name: str = "weight",
    hint: float | None = None,
    kernels: MaskKernels | None = None,
) -> torch.Tensor:
    """PDP's threshold t: the midpoint between the smallest kept and largest pruned magnitude.

    Returns a float32 scalar tensor on the weight's device, detached (t is a statistic of W, not
    a function that gradients flow through). At sparsity 0 it is 0, so every weight is kept.

    ``hint`` (e.g. last step's t) only makes it faster, never different: if a narrow band around
    the hint holds both a(k) and a(k+1), they are picked from the band instead of a top-k over the
    whole tensor (exact, the same two float32 values); otherwise the full top-k runs. ``kernels``
    with ``counts_above`` and ``in_band`` (the fused ones) find the band in two passes over the
    weights instead of about eight.
    """
    n = weight.numel()
    k = keep_count(n, sparsity)
    if (
        hint is not None
        and hint > 0.0
        and 0 < k < n
        and kernels is not None
        and kernels.counts_above is not None
        and kernels.in_band is not None
    ):
        pair = _pair_by_band_counts(weight, k, hint, kernels, check, name)
        if pair is not None:
            return 0.5 * (pair[0] + pair[1])
        hint = None  # the band around the hint missed a(k) or a(k+1): the full top-k below
    mags = _magnitudes_f32(weight)
    if check and not bool(torch.isfinite(mags.max())):  # max is NaN or inf iff some element is
        check_finite(weight, name)
    if k >= n:
        return torch.zeros((), dtype=torch.float32, device=weight.device)
    if hint is not None and hint > 0.0:
        for width in (0.002, 0.02, 0.2):
            pair = _pair_in_band(mags, k, hint * (1.0 - width), hint * (1.0 + width))
            if pair is not None:
                return 0.5 * (pair[0] + pair[1])
    if mags.device.type == "cpu":
        kth, next_kth = _pair_by_selection(mags, k)
        return 0.5 * (kth + next_kth)
    # The (k+1) largest magnitudes: the last two are a(k) and a(k+1).
    top = torch.topk(mags, k + 1, sorted=True).values
    return 0.5 * (top[k - 1] + top[k])


def _pair_by_selection(mags: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """a(k) and a(k+1), the k-th and (k+1)-th largest of ``mags`` (0 < k < n), by one selection
    and a pass: on CPU a quickselect costs the same at any k, where a top-k of k + 1 elements
    sorts nearly the whole tensor when k is close to n (early in a ramp)."""
    n = mags.numel()
    kth = torch.kthvalue(mags, n - k + 1).values  # the (n - k + 1)-th smallest is the k-th largest
    below = mags < kth
    if int(below.sum()) < n - k:  # a(k + 1) ties with a(k)
        return kth, kth
    return kth, torch.where(below, mags, torch.zeros((), dtype=mags.dtype)).max()


def threshold_by_counts(
    count: Callable[[torch.Tensor], int],
    numel: int,
    target: int,
    slack: float,
    start: tuple[torch.Tensor, int],
    elasticity: float,
    max_counts: int = 4,
) -> tuple[torch.Tensor, int, float] | None:
    """A threshold t whose kept count ``count(t)`` (elements with |w| > t) is within ``slack`` of
    ``target``, found from a known point by secant steps on counts alone, or None.

    ``start`` is (t0, count(t0)); ``elasticity`` the expected relative change of the kept fraction
    per relative change of t (about 0.3 to 0.5 for bell-shaped weights), which sizes the first
    step. Each step costs one count (one pass over the weights) instead of a selection; None after
    ``max_counts`` counts, or when the counts stop moving, and the caller selects t exactly.
    Returns (t as a float32 scalar tensor, its count, the elasticity measured on the way).
    """
    t_prev, c_prev = float(start[0]), int(start[1])
    if not (t_prev > 0.0 and elasticity > 0.0):
        return None
    t_next = t_prev * (1.0 + (c_prev - target) / (numel * elasticity))
    for _ in range(max_counts):
        if not (0.0 < t_next < float("inf")):
            return None
        t = torch.tensor(t_next, dtype=torch.float32, device=start[0].device)
        t_now = float(t)
        if t_now == t_prev:
            return None
        c = int(count(t))
        slope = (c - c_prev) / (t_now - t_prev)  # counts fall as t grows: slope <= 0
        # Clamped so that one odd step (a gap or a clump in the magnitudes) cannot skew the next start.
        measured = min(5.0, max(0.05, -slope * t_now / numel)) if slope < 0 else elasticity
        if abs(c - target) <= slack:
            return t, c, measured
        if slope >= 0:
            return None
        t_prev, c_prev, t_next = t_now, c, t_now + (target - c) / slope
    return None


_BAND_WIDTHS = (0.2, 0.02, 0.002)  # relative half-widths of the bands tried around a hint


def band_edges(hint: float, device: torch.device) -> torch.Tensor:
    """Six float32 edges around ``hint``, descending: hint x (1.2, 1.02, 1.002, 0.998, 0.98, 0.8)."""
    factors = [1.0 + w for w in _BAND_WIDTHS] + [1.0 - w for w in reversed(_BAND_WIDTHS)]
    return torch.tensor([hint * f for f in factors], dtype=torch.float32, device=device)


def _pair_by_band_counts(
    weight: torch.Tensor, k: int, hint: float, kernels: MaskKernels, check: bool, name: str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """a(k) and a(k+1) from the narrowest band around ``hint`` that holds both, or None.

    One pass counts the magnitudes above each of six edges; ranks 1..count(e) are exactly those
    above edge e, so a(k) and a(k+1) lie in (low, high] when count(high) < k <= k + 1 <= count(low).
    A second pass marks that band, and a top-k over the band alone picks the pair.
    """
    assert kernels.counts_above is not None and kernels.in_band is not None
    edges = band_edges(hint, weight.device)
    counted = kernels.counts_above(weight, edges)
    if counted is None:
        return None
    counts, finite = counted
    if check and not finite:
        check_finite(weight, name)
    below_k = [i for i, c in enumerate(counts) if c < k]
    at_least = [i for i, c in enumerate(counts) if c >= k + 1]
    if not below_k or not at_least:
        return None
    high, low = below_k[-1], at_least[0]
    marks = kernels.in_band(weight, edges[low], edges[high])
    if marks is None:
        return None
    index = marks.nonzero().squeeze(1)
    if index.numel() != counts[low] - counts[high]:  # the two kernels disagree: never trust either
        return None
    band = weight.detach().reshape(-1)[index].abs().float()
    top = torch.topk(band, k + 1 - counts[high], sorted=True).values
    return top[-2], top[-1]


def _pair_in_band(
    mags: torch.Tensor, k: int, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """a(k) and a(k+1) (1-based, descending) if both lie in [low, high], else None.

    In descending order the magnitudes are: those above ``high``, then the band, then those
    below ``low``; so rank r falls in the band when above < r <= above + len(band).
    """
    above = int(torch.count_nonzero(mags > high))
    if above >= k:
        return None
    band = mags[(mags >= low) & (mags <= high)]
    if above + band.numel() < k + 1:
        return None
    top = torch.topk(band, k + 1 - above, sorted=True).values
    return top[-2], top[-1]


def soft_mask(weight: torch.Tensor, threshold: torch.Tensor | float, tau: float) -> torch.Tensor:
    """PDP's keep-mask m = sigmoid((w^2 - t^2) / tau), in float32, differentiable in ``weight``.

    Written as (|w| - t)(|w| + t) rather than w^2 - t^2 so that huge bf16 weights do not overflow
    to inf - inf; sigmoid saturates cleanly, so no exp(w^2/tau) is ever formed.
    """
    magnitude = weight.float().abs()
    t = torch.as_tensor(threshold, dtype=torch.float32, device=weight.device).detach()
    logit = (magnitude - t) * (magnitude + t) / tau
    # Far below the threshold sigmoid underflows into denormal floats, and matmuls with denormal
    # weights ran 30x slower on x86 CPUs (MiniLM-L6 at 90%: 19 s vs 0.6 s per forward). Below
    # LOGIT_FLOOR the mask is exactly 0 instead: a change of < 2e-22 in m, below float32 resolution
    # of any kept weight.
    return torch.where(logit > LOGIT_FLOOR, torch.sigmoid(logit), 0.0)


def soft_masked_weight(
    weight: torch.Tensor,
    threshold: torch.Tensor | float,
    tau: float | torch.Tensor,
    kernels: MaskKernels | None = None,
) -> torch.Tensor:
    """The weight a PDP layer computes with: m(w) * w, in the weight's dtype.

    Its gradient with respect to w is m * (1 + 2 w^2 (1 - m) / tau), which boosts weights near
    the threshold so they can cross it. Computed by :class:`SoftMaskedWeight`: the same values as
    ``soft_mask(w, t, tau) * w``, but it keeps only w and t for backward (the mask is recomputed
    there), so PDP's extra memory is the masked weight alone. ``tau`` is a number or a 0-d tensor
    (a temperature computed on the device, see :func:`relative_temperature`). ``kernels`` chooses
    how the elementwise work runs (:data:`EAGER_KERNELS` by default; :mod:`pdprune.kernels` has
    fused ones).
    """
    t = torch.as_tensor(threshold, dtype=torch.float32, device=weight.device).detach()
    if isinstance(tau, torch.Tensor):
        tau = tau.detach().to(device=weight.device, dtype=torch.float32)
    else:
        tau = float(tau)
    return (kernels or EAGER_KERNELS).function.apply(weight, t, tau)


def _logits(weight32: torch.Tensor, t: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    # (w^2 - t^2) / tau as one fused multiply-add. The constant is clamped to the float32 range so
    # that overflowing squares (|w| or t above ~1e19) give -inf + finite or inf + finite, never
    # inf - inf: a weight far above the threshold still reads inf (kept), one far below -3e38 (cut).
    offset = (-(t * t) / tau).clamp(min=-torch.finfo(torch.float32).max)
    if isinstance(tau, torch.Tensor):  # a temperature on the device: one more pass, no sync
        logit = torch.mul(weight32, weight32).mul_(1.0 / tau).add_(offset)
    else:
        logit = torch.addcmul(offset, weight32, weight32, value=1.0 / tau)
    # Exactly 0 below LOGIT_FLOOR (sigmoid(-inf) = 0): no denormal weights reach the matmuls.
    return torch.nn.functional.threshold_(logit, LOGIT_FLOOR, -float("inf"))


def masked_forward_eager(weight: torch.Tensor, t: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """m(w) * w in the weight's dtype: one fused multiply-add, then in-place ops (4 passes over w)."""
    weight32 = weight.float()
    mask = _logits(weight32, t, tau).sigmoid_()
    return mask.mul_(weight32).to(weight.dtype)


def masked_backward_eager(
    weight: torch.Tensor, t: torch.Tensor, tau: float | torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """d(m w)/dw times ``grad``, with m recomputed from w and t (6 passes over w)."""
    weight32 = weight.float()
    mask = _logits(weight32, t, tau).sigmoid_()
    # d(m w)/dw = m + (2 / tau) * m (1 - m) * w * w. m (1 - m) w is at most |w| / 4 and is 0
    # wherever m saturates, so the product below never meets 0 * inf.
    slope = torch.addcmul(mask, mask, mask, value=-1.0).mul_(weight32)
    if isinstance(tau, torch.Tensor):
        factor = mask.add_(slope.mul_(weight32).mul_(2.0 / tau))
    else:
        factor = mask.addcmul_(slope, weight32, value=2.0 / tau)
    return factor.mul_(grad.float()).to(weight.dtype)


def count_above_eager(weight: torch.Tensor, t: torch.Tensor) -> tuple[int, bool]:
    """How many elements have |w| > t, and whether every element is finite."""
    mags = weight.detach().abs()
    finite = bool(torch.isfinite(mags.max())) if mags.numel() else True
    return int(torch.count_nonzero(mags.float() > t)), finite


class SoftMaskedWeight(torch.autograd.Function):
    """m(w) * w with m = sigmoid((w^2 - t^2) / tau); t is a statistic of w, not differentiated.

    Saves only w and t for backward, where the mask is recomputed rather than kept.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, t: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight, t)
        ctx.tau = tau
        return masked_forward_eager(weight, t, tau)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        weight, t = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return masked_backward_eager(weight, t, ctx.tau, grad), None, None


@dataclass(frozen=True)
class MaskKernels:
    """How a PDP layer's elementwise work runs: the masked weight (an autograd Function whose
    ``apply(w, t, tau)`` computes what :class:`SoftMaskedWeight` does) and the kept count (what
    :func:`count_above_eager` returns). Kernels may differ from the eager ones by float rounding only.
    """

    name: str
    function: type[torch.autograd.Function]
    count: Callable[[torch.Tensor, torch.Tensor], tuple[int, bool]]
    # Optional, for the exact threshold search near a hint: ``counts_above(w, edges)`` gives
    # (how many |w| exceed each edge, all finite?) in one pass, or None if it cannot run;
    # ``in_band(w, low, high)`` the uint8 indicator of low < |w| <= high.
    counts_above: Callable[[torch.Tensor, torch.Tensor], tuple[list[int], bool] | None] | None = None
    in_band: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None


EAGER_KERNELS = MaskKernels("eager", SoftMaskedWeight, count_above_eager)


def hard_mask(weight: torch.Tensor, sparsity: float, name: str = "weight") -> torch.Tensor:
    """Boolean mask keeping exactly ``keep_count(n, sparsity)`` largest-magnitude elements.

    Ties are broken by position (the earlier element wins), so the result is deterministic and
    always has the exact count. These are the weights with m >= 1/2 when magnitudes are distinct.
    """
    check_finite(weight, name)
    n = weight.numel()
    k = keep_count(n, sparsity)
    if k >= n:
        return torch.ones_like(weight, dtype=torch.bool)
    return top_magnitude_mask(weight, k)

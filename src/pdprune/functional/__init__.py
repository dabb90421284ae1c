"""Pure tensor maths of PDP: thresholds, soft masks, hardening, N:M groups and per-layer budgets.
No modules, no state."""

from pdprune.functional.budgets import erk_budgets, global_magnitude_budgets
from pdprune.functional.channels import channel_cut, channel_keep, channel_scores, channel_soft_mask
from pdprune.functional.masks import (
    EAGER_KERNELS,
    MaskKernels,
    SoftMaskedWeight,
    check_finite,
    check_sparsity,
    check_tau,
    count_above_eager,
    hard_mask,
    keep_count,
    midpoint_threshold,
    relative_temperature,
    soft_mask,
    soft_masked_weight,
    threshold_by_counts,
)
from pdprune.functional.nm import check_nm, nm_hard_mask, nm_threshold

__all__ = [
    "EAGER_KERNELS",
    "MaskKernels",
    "SoftMaskedWeight",
    "channel_cut",
    "channel_keep",
    "channel_scores",
    "channel_soft_mask",
    "check_finite",
    "check_nm",
    "check_sparsity",
    "check_tau",
    "count_above_eager",
    "erk_budgets",
    "global_magnitude_budgets",
    "hard_mask",
    "keep_count",
    "midpoint_threshold",
    "nm_hard_mask",
    "nm_threshold",
    "relative_temperature",
    "soft_mask",
    "soft_masked_weight",
    "threshold_by_counts",
]

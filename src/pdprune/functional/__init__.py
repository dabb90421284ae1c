"""Pure tensor maths of PDP: thresholds, soft masks, hardening, N:M groups and per-layer budgets.
No modules, no state."""

from pdprune.functional.budgets import erk_budgets, global_magnitude_budgets
from pdprune.functional.channels import channel_cut, channel_keep, channel_scores, channel_soft_mask
from pdprune.functional.masks import (
    check_finite,
    check_sparsity,
    check_tau,
    count_above_eager,
    EAGER_KERNELS,
    hard_mask,
    keep_count,
    MaskKernels,
    midpoint_threshold,
    SoftMaskedWeight,
    soft_mask,
    soft_masked_weight,
    threshold_by_counts,
)
from pdprune.functional.nm import check_nm, nm_hard_mask, nm_threshold

__all__ = [
    "channel_cut",
    "channel_keep",
    "channel_scores",
    "channel_soft_mask",
    "check_finite",
    "check_nm",
    "check_sparsity",
    "check_tau",
    "count_above_eager",
    "EAGER_KERNELS",
    "erk_budgets",
    "global_magnitude_budgets",
    "hard_mask",
    "keep_count",
    "MaskKernels",
    "midpoint_threshold",
    "nm_hard_mask",
    "nm_threshold",
    "soft_mask",
    "soft_masked_weight",
    "SoftMaskedWeight",
    "threshold_by_counts",
]

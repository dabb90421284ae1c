"""Channel pruning maths: one score per output channel of a coupled group, PDP's soft mask over
those scores, and exact hardening. Pure functions, no modules, no state."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pdprune.functional.masks import LOGIT_FLOOR

__all__ = ["channel_cut", "channel_keep", "channel_scores", "channel_soft_mask"]


def channel_scores(
    weights: Sequence[tuple[torch.Tensor, int]], norm: str = "l2", detach: bool = True
) -> torch.Tensor:
    """Squared L2 norm (``norm="l2"``, PDP's score) or L1 norm (``"l1"``, the classic baseline's)
    of each channel, summed over the coupled weights (weight, channel dim).

    Every weight must have the same number of channels along its dim; float32. ``detach=False``
    keeps the graph, for the differentiable mask.
    """
    if norm not in ("l2", "l1"):
        raise ValueError(f"norm must be 'l2' or 'l1', got {norm!r}")
    if not weights:
        raise ValueError("a channel group needs at least one weight to score")
    total = None
    for weight, dim in weights:
        w = (weight.detach() if detach else weight).float()
        values = w.pow(2) if norm == "l2" else w.abs()
        squares = values.sum(dim=[d for d in range(w.dim()) if d != dim]) if w.dim() > 1 else values
        if total is not None and squares.shape != total.shape:
            raise ValueError(
                f"coupled weights disagree on the channel count: {tuple(squares.shape)} vs "
                f"{tuple(total.shape)}"
            )
        total = squares if total is None else total + squares
    assert total is not None
    return total


def channel_cut(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """t^2 where t is the midpoint between the keep-th and (keep+1)-th largest channel norm
    (detached: t is a statistic of the weights, as for weight masks)."""
    norms = torch.topk(scores.detach().sqrt(), keep + 1, sorted=True).values
    return (0.5 * (norms[keep - 1] + norms[keep])) ** 2


def channel_soft_mask(
    scores: torch.Tensor, keep: int, tau: float, cut: torch.Tensor | None = None
) -> torch.Tensor:
    """PDP's mask per channel: sigmoid((s - t^2) / (tau * t^2)) with s the squared channel norm
    and t the midpoint between the keep-th and (keep+1)-th largest norm (``cut`` = t^2, if known).

    Differentiable in ``scores`` (pass undetached scores), so channels near the cut get the
    boost m * 2s(1 - m) / (tau t^2) that lets them cross it, as weights do. ``tau`` is relative to
    t^2 so one value fits layers of any scale. Channels far below the cut get exactly 0.
    """
    channels = scores.numel()
    if not 1 <= keep <= channels:
        raise ValueError(f"keep must be between 1 and the {channels} channels, got {keep}")
    if keep == channels:
        return torch.ones_like(scores)
    t2 = channel_cut(scores, keep) if cut is None else cut
    temperature = tau * t2
    if not bool(temperature > 0):  # the channels at the cut are all zero: nothing to rank softly
        return channel_keep(scores.detach(), keep).float()
    logit = (scores - t2) / temperature
    return torch.where(logit > LOGIT_FLOOR, torch.sigmoid(logit), 0.0)


def channel_keep(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` highest-scoring channels (ties: the earlier channel wins)."""
    channels = scores.numel()
    if not 1 <= keep <= channels:
        raise ValueError(f"keep must be between 1 and the {channels} channels, got {keep}")
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    mask = torch.zeros(channels, dtype=torch.bool, device=scores.device)
    mask[order[:keep]] = True
    return mask

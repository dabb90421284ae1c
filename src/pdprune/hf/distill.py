"""Fine-tuning while pruning with distillation from the dense model, as the PDP paper's BERT recipe
does (distillation weighted 0.95, the task 0.05): a ``Trainer`` whose loss mixes the two."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

__all__ = ["DistillationTrainer", "distillation_loss"]


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions over the last dimension, times
    ``temperature**2`` (so its gradients keep their scale as the temperature grows), averaged over
    the positions ``mask`` keeps (every position without a mask)."""
    student = (student.float() / temperature).log_softmax(-1).reshape(-1, student.shape[-1])
    teacher = (teacher.float() / temperature).log_softmax(-1).reshape(-1, teacher.shape[-1])
    per_position = nn.functional.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    if mask is not None and mask.numel() == per_position.numel():
        keep = mask.reshape(-1).bool()
        per_position = per_position[keep]
    return per_position.mean() * temperature**2


class DistillationTrainer(transformers.Trainer):
    """A ``Trainer`` whose loss is ``(1 - alpha) * task + alpha * distillation`` from ``teacher``.

    Args:
        teacher: the dense model before pruning (``copy.deepcopy(model)`` before training); kept
            frozen, in eval mode, on the student's device.
        alpha: the distillation's weight (0.95 in the paper's BERT recipe).
        temperature: softens both distributions (2.0 by default).

    Token-level logits (language models) are distilled at every position the attention mask
    keeps. Both terms are means over each micro-batch, and the Trainer divides by the gradient
    accumulation steps as usual. Pass a :class:`pdprune.hf.PruningCallback` to prune while it trains.
    """

    def __init__(
        self, *args: Any, teacher: nn.Module, alpha: float = 0.95, temperature: float = 2.0, **kwargs: Any
    ):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha is the distillation's weight, in [0, 1]; got {alpha}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature
        self.loss_is_scaled_for_ga = False  # micro-batch means: the Trainer divides by the accumulation

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        outputs = model(**inputs)
        if outputs.get("loss") is None:
            raise ValueError("distillation mixes in the task loss: pass labels in the batch")
        device = outputs["logits"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"})
        mask = inputs.get("attention_mask")
        distilled = distillation_loss(outputs["logits"], teacher["logits"], self.temperature, mask)
        loss = (1.0 - self.alpha) * outputs["loss"] + self.alpha * distilled
        return (loss, outputs) if return_outputs else loss

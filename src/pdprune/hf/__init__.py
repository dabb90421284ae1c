"""Hugging Face transformers integration: prune inside ``Trainer`` with :class:`PruningCallback`;
distil from the dense model with :class:`DistillationTrainer`; save a channel-shrunk model with
:func:`save_pretrained` and load it with :func:`from_pretrained`.

Needs the ``hf`` extra (``pip install 'pdprune[hf]'``: transformers and accelerate).
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("pdprune.hf needs Hugging Face transformers: pip install 'pdprune[hf]'") from error

from pdprune.hf.callback import PruningCallback
from pdprune.hf.distill import DistillationTrainer, distillation_loss
from pdprune.hf.pretrained import from_pretrained, save_pretrained

__all__ = [
    "DistillationTrainer",
    "PruningCallback",
    "distillation_loss",
    "from_pretrained",
    "save_pretrained",
]

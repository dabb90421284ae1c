"""Channel-shrunk Hugging Face models as folders that load back through the Hugging Face API.

Where the shrunk widths are the same in every layer, the config can say so: the folder is a plain
``save_pretrained`` folder with the config updated, and ``AutoModel...from_pretrained`` reads it.
Where they differ per layer (or heads were removed, which BERT's config cannot express), the
folder keeps the original config, the weights and pdprune's shape plan, and
:func:`from_pretrained` rebuilds the model from them: no pickle either way.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from pdprune.export.shrunk import WEIGHTS_FILE, rebuild_shrunk, shrunk_writer
from pdprune.io import atomic_folder, readable_folder

__all__ = ["MANIFEST_FILE", "PLAN_FILE", "from_pretrained", "save_pretrained"]

#: Says how the folder's shapes are known: from the config alone, or from the plan.
MANIFEST_FILE = "pdprune.json"
PLAN_FILE = "pdprune_plan.json"

#: Config fields holding the feed-forward width of every layer, by model family.
_FFN_WIDTH_FIELDS = ("intermediate_size", "n_inner", "ffn_dim")
#: Names (suffixes) of the layers whose output width is that feed-forward width.
_FFN_LAYERS = (".intermediate.dense", ".mlp.gate_proj", ".mlp.up_proj", ".mlp.c_fc", ".fc1")


def save_pretrained(pruner: Any, directory: str | os.PathLike[str]) -> Path:
    """Write the model a channel pruner shrank as a Hugging Face folder (atomically).

    If one config change describes every layer's new width, the config is updated and the folder
    is what ``model.save_pretrained`` writes: ``AutoModel...from_pretrained(directory)`` loads it.
    Otherwise the folder holds the original config, the weights and a shape plan, and
    :func:`pdprune.hf.from_pretrained` loads it. Either way ``pdprune.hf.from_pretrained`` works.
    """
    if not callable(getattr(pruner, "pruning_plan", None)):
        raise TypeError(
            f"pdprune.hf.save_pretrained() takes the channel pruner that shrank the model, got "
            f"{type(pruner).__name__}; unstructured and N:M pruning keep the shapes: after finalize(), "
            "model.save_pretrained() writes the zeros"
        )
    if not pruner.shrunk:
        raise RuntimeError("the model is not shrunk yet: call pruner.finalize(), then pruner.shrink()")
    model = pruner.model
    if not isinstance(model, transformers.PreTrainedModel):
        raise TypeError(
            f"pdprune.hf.save_pretrained() saves Hugging Face models, and the pruner's model is a "
            f"{type(model).__name__}; use pdprune.save_shrunk for other models"
        )
    model.config.architectures = [type(model).__name__]
    config = config_for_shapes(model)
    if config is not None:
        model.config = config

        def write_config_only(folder: Path) -> None:
            model.save_pretrained(folder)
            _write_manifest(folder, "config")

        return atomic_folder(directory, write_config_only)

    write_plan = shrunk_writer(pruner, directory, plan_file=PLAN_FILE)

    def write_with_plan(folder: Path) -> None:
        write_plan(folder)
        model.config.to_json_file(folder / "config.json")
        _write_manifest(folder, "plan")

    return atomic_folder(directory, write_with_plan)


def from_pretrained(
    directory: str | os.PathLike[str], model_class: type | None = None, **kwargs: Any
) -> nn.Module:
    """Load a folder written by :func:`save_pretrained` (or any ``save_pretrained`` folder).

    ``model_class`` defaults to the class the config names (``config.architectures``). A folder
    with a shape plan is rebuilt: the class is built dense from the config, the plan's removals
    shrink it, and the weights load (checked against their checksums). Returns the model in eval
    mode, as ``from_pretrained`` does; ``kwargs`` go to ``from_pretrained`` for plain folders.
    """
    folder = readable_folder(directory)
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = model_class or _class_for(config, folder)
    manifest = folder / MANIFEST_FILE
    shapes_from = json.loads(manifest.read_text()).get("shapes_from") if manifest.is_file() else "config"
    if shapes_from == "config":
        return cls.from_pretrained(folder, **kwargs)
    if shapes_from != "plan":
        raise ValueError(f"{manifest} says shapes_from={shapes_from!r}; expected 'config' or 'plan'")
    if kwargs:
        raise TypeError(
            f"a folder with a shape plan takes no from_pretrained arguments, got {sorted(kwargs)}"
        )
    model = rebuild_shrunk(folder / PLAN_FILE, folder / WEIGHTS_FILE, lambda: cls(config))
    return model.eval()


def config_for_shapes(model: nn.Module) -> Any | None:
    """A copy of ``model.config`` that builds exactly the shrunk model's tensor shapes, or None
    when no single width per field describes every layer."""
    config = model.config  # type: ignore[attr-defined]
    widths = {_out_features(module) for name, module in model.named_modules() if name.endswith(_FFN_LAYERS)}
    widths.discard(None)
    candidate = copy.deepcopy(config)
    if len(widths) == 1:
        for field in _FFN_WIDTH_FIELDS:
            if hasattr(candidate, field):  # GPT-2's n_inner is None for 4 x the hidden size
                setattr(candidate, field, widths.pop())
                break
    heads = {
        (m.q_proj.out_features // m.head_dim, m.k_proj.out_features // m.head_dim, m.head_dim)
        for m in model.modules()
        if isinstance(getattr(m, "head_dim", None), int) and isinstance(getattr(m, "q_proj", None), nn.Linear)
    }
    if len(heads) == 1 and getattr(candidate, "num_key_value_heads", None) is not None:
        # Llama-style configs name the head size, so fewer heads of the same size fit in them
        query_heads, key_heads, head_dim = heads.pop()
        candidate.num_attention_heads, candidate.num_key_value_heads = query_heads, key_heads
        candidate.head_dim = head_dim
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    with torch.device("meta"):
        rebuilt = type(model)(candidate)
    if {name: tuple(t.shape) for name, t in rebuilt.state_dict().items()} != shapes:
        return None
    return candidate


def _out_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    nf = getattr(module, "nf", None)  # transformers' Conv1D
    return nf if isinstance(nf, int) else None


def _class_for(config: Any, folder: Path) -> type:
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise ValueError(
            f"{folder / 'config.json'} names no transformers model class (architectures={names!r}); pass "
            "model_class=, e.g. transformers.BertModel"
        )
    return cls


def _write_manifest(folder: Path, shapes_from: str) -> None:
    manifest = {"format": 1, "kind": "pdprune hugging face model", "shapes_from": shapes_from}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

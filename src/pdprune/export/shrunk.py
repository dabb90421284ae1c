"""A portable checkpoint of a channel-shrunk model: safetensors weights and a JSON shape plan.

The plan records the removals (which channels of which layer, in order) and the example inputs'
shapes. Loading builds the user's class from its own constructor, replays the removals and loads
the weights: no pickle anywhere, so a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdprune.channel.inputs import build_inputs, input_spec
from pdprune.channel.replay import apply_removals
from pdprune.channel.trace import trace
from pdprune.io import atomic_write, atomic_write_json, ensure_writable_folder

__all__ = ["load_shrunk", "save_shrunk"]

PLAN_FORMAT = 1
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"


def _class_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def save_shrunk(pruner: Any, directory: str | os.PathLike[str], example_inputs: Any = None) -> list[Path]:
    """Write ``model.safetensors`` and ``plan.json`` for the model a channel pruner has shrunk.

    The plan records the example inputs the pruner traced with (their shapes and dtypes);
    ``example_inputs``, if given, replaces them and must have the same form.
    """
    from safetensors.torch import save_model

    if not callable(getattr(pruner, "pruning_plan", None)):
        raise TypeError(
            f"save_shrunk() takes the channel pruner that shrank the model (pattern='channel', after "
            f"finalize() and shrink()), got {type(pruner).__name__}; unstructured and N:M pruning keep the "
            f"model's shapes: save it with pdprune.export.save_sparse or save_dense"
        )
    folder = ensure_writable_folder(directory)
    model = pruner.model
    plan = {
        "format": PLAN_FORMAT,
        "kind": "pdprune shrunk model",
        "class": _class_name(model),
        "removals": pruner.pruning_plan(),
        "declared": pruner.declared_plan(),
        "example_inputs": pruner.example_spec if example_inputs is None else input_spec(example_inputs),
        "shapes": {name: list(t.shape) for name, t in model.state_dict().items()},
    }
    weights = atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_model(model, str(tmp)))
    return [weights, atomic_write_json(folder / PLAN_FILE, plan)]


def load_shrunk(
    directory: str | os.PathLike[str], build: Callable[..., nn.Module], *args: Any, **kwargs: Any
) -> nn.Module:
    """Rebuild a shrunk model: ``build(*args, **kwargs)`` (the class or any factory) makes the
    dense model, the plan's removals shrink it, and the weights load into it (strictly)."""
    from safetensors.torch import load_model

    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "load_shrunk() traces the model with autograd to replay the removals; call it outside "
            "torch.inference_mode() (torch.no_grad() is fine) and switch modes afterwards"
        )
    folder = Path(directory)
    plan_path = folder / PLAN_FILE
    if not plan_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} holds no shrunk model: expected {PLAN_FILE} and {WEIGHTS_FILE} (see "
            "pdprune.save_shrunk)"
        )
    try:
        plan = json.loads(plan_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{plan_path} is not valid JSON ({error})") from None
    if (
        not isinstance(plan, dict)
        or plan.get("kind") != "pdprune shrunk model"
        or plan.get("format") != PLAN_FORMAT
    ):
        raise ValueError(f"{plan_path} is not a pdprune shrunk-model plan (format {PLAN_FORMAT})")
    missing = [
        key for key in ("class", "removals", "declared", "example_inputs", "shapes") if key not in plan
    ]
    if missing:
        raise ValueError(f"{plan_path} is incomplete: it has no {', '.join(missing)}")
    model = build(*args, **kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"build(...) must return an nn.Module, got {type(model).__name__}")
    if _class_name(model) != plan["class"]:
        raise ValueError(
            f"this checkpoint holds a {plan['class']}, but build(...) made a {_class_name(model)}"
        )
    was_training = model.training
    model.eval()
    try:
        graph = trace(model, build_inputs(plan["example_inputs"]))
        graph.load_pruning_history([tuple(step) for step in plan["removals"]])
        declared = plan["declared"]
        apply_removals(dict(model.named_modules()), declared["removals"], declared["attributes"])
    except Exception as error:
        raise ValueError(
            f"the model build(...) made does not take this checkpoint's plan ({type(error).__name__}: "
            f"{str(error)[:160]}); "
            f"build it with the same constructor arguments and dtype as the model that was pruned"
        ) from None
    finally:
        model.train(was_training)
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    if shapes != plan["shapes"]:
        differ = sorted(
            n for n in set(shapes) | set(plan["shapes"]) if shapes.get(n) != plan["shapes"].get(n)
        )
        raise ValueError(
            f"after the plan's removals the model's tensors differ from the checkpoint's: "
            f"{', '.join(differ[:5])}; build it with the same constructor arguments as the pruned model"
        )
    missing, _unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=True)
    return model

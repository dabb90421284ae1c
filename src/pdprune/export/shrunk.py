"""A portable checkpoint of a channel-shrunk model: safetensors weights and a JSON shape plan.

The plan records the removals (which channels of which layer, in order), the size attributes of
declared groups and the shape of one example input. Loading builds the user's class from its own
constructor, replays the removals and loads the weights: no pickle anywhere, and the plan is
checked as data (see :mod:`pdprune.export.plan`), so a checkpoint from an untrusted source can
neither run code nor set arbitrary attributes. The folder is written atomically and every tensor
and the plan carry checksums.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdprune.channel.inputs import build_inputs, input_spec, one_batch
from pdprune.channel.replay import apply_removals
from pdprune.channel.trace import trace
from pdprune.errors import CheckpointError
from pdprune.export.container import describe, warn_unverifiable
from pdprune.export.dense import read_dense, write_dense
from pdprune.export.plan import (
    MAX_EXAMPLE_ELEMENTS,
    PLAN_FORMAT,
    check_attributes,
    check_groups_after,
    check_module_sizes,
    read_plan,
    seal,
)
from pdprune.integrity import canonical_json
from pdprune.io import atomic_folder, ensure_writable_folder, readable_folder

__all__ = ["load_shrunk", "rebuild_shrunk", "save_shrunk", "shrunk_writer"]

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"


def _class_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def save_shrunk(pruner: Any, directory: str | os.PathLike[str], example_inputs: Any = None) -> list[Path]:
    """Write ``model.safetensors`` and ``plan.json`` for the model a channel pruner has shrunk.

    The plan records the form of the example inputs the pruner traced with (shapes and dtypes,
    cut to one example); ``example_inputs``, if given, replaces them. The folder is replaced
    atomically: a crash leaves the old or the new model, and other files in it are kept.
    """
    write = shrunk_writer(pruner, directory, example_inputs)
    folder = atomic_folder(directory, write)
    return [folder / WEIGHTS_FILE, folder / PLAN_FILE]


def shrunk_writer(
    pruner: Any, directory: str | os.PathLike[str], example_inputs: Any = None, plan_file: str = PLAN_FILE
) -> Callable[[Path], None]:
    """Check that ``pruner`` shrank its model and return ``write(folder)``, which writes the
    weights and the plan (as ``plan_file``) into a staging folder of :func:`atomic_folder`."""
    if not callable(getattr(pruner, "pruning_plan", None)):
        raise TypeError(
            f"save_shrunk() takes the channel pruner that shrank the model (pattern='channel', after "
            f"finalize() and shrink()), got {type(pruner).__name__}; unstructured and N:M pruning keep the "
            f"model's shapes: save it with pdprune.export.save_sparse or save_dense"
        )
    ensure_writable_folder(directory)
    model = pruner.model
    spec = one_batch(pruner.example_spec if example_inputs is None else input_spec(example_inputs))
    total = _elements(spec)
    if total > MAX_EXAMPLE_ELEMENTS:
        raise ValueError(
            f"the example inputs hold {total} elements for one example, more than a plan stores "
            f"({MAX_EXAMPLE_ELEMENTS}); pass smaller ones: save_shrunk(pruner, folder, example_inputs=...)"
        )
    removals, declared = pruner.pruning_plan(), pruner.declared_plan()

    def write(folder: Path) -> None:
        description = write_dense(model, folder / WEIGHTS_FILE)
        plan = {
            "format": PLAN_FORMAT,
            "kind": "pdprune shrunk model",
            "class": _class_name(model),
            "removals": removals,
            "declared": declared,
            "example_inputs": spec,
            "shapes": {name: list(t.shape) for name, t in model.state_dict().items()},
            "weights": describe(description)["sha256"],
        }
        (folder / plan_file).write_text(canonical_json(seal(plan)) + "\n", encoding="utf-8")

    return write


def _elements(spec: Any) -> int:
    if "tensor" in spec:
        count = 1
        for size in spec["tensor"]:
            count *= size
        return count
    children = spec.get("list", []) or list(spec.get("dict", {}).values())
    return sum(_elements(child) for child in children)


def load_shrunk(
    directory: str | os.PathLike[str],
    build: Callable[..., nn.Module],
    *args: Any,
    verify: bool = True,
    example_inputs: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Rebuild a shrunk model: ``build(*args, **kwargs)`` (the class or any factory) makes the
    dense model, the plan's removals shrink it, and the weights load into it (strictly).

    The plan is checked field by field and each tensor against its checksum (``verify=False``
    skips the tensors' checksums); a bad folder raises :class:`pdprune.CheckpointError`. The
    removals are replayed by tracing the model on zeros shaped like the plan's example (one
    batch of at most 2**21 elements); ``example_inputs`` traces on yours instead.
    """
    folder = readable_folder(directory)
    plan_path, weights_path = folder / PLAN_FILE, folder / WEIGHTS_FILE
    if not plan_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{Path(directory)} holds no shrunk model: expected {PLAN_FILE} and {WEIGHTS_FILE} (see "
            "pdprune.save_shrunk)"
        )
    return rebuild_shrunk(
        plan_path, weights_path, lambda: build(*args, **kwargs), verify=verify, example_inputs=example_inputs
    )


def rebuild_shrunk(
    plan_path: Path,
    weights_path: Path,
    build: Callable[[], nn.Module],
    verify: bool = True,
    example_inputs: Any = None,
) -> nn.Module:
    """What :func:`load_shrunk` does once it has found the plan and the weights."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "loading a shrunk model traces it with autograd to replay the removals; call it outside "
            "torch.inference_mode() (torch.no_grad() is fine) and switch modes afterwards"
        )
    plan = read_plan(plan_path)
    state, description = read_dense(weights_path, verify=verify)
    if plan.weights is None:  # a plan of the first format, from before checksums
        if description is not None:
            raise CheckpointError(
                plan_path, "format", "1, beside weights that carry checksums (an edited or damaged plan)", "2"
            )
        if verify:
            warn_unverifiable(plan_path, "by an earlier pdprune (plan format 1)")
    elif description is None or describe(description)["sha256"] != plan.weights:
        raise CheckpointError(
            weights_path, "description", "does not belong to this plan (saved by another save_shrunk)",
            "the weights written with plan.json",
        )  # fmt: skip
    model = build()
    if not isinstance(model, nn.Module):
        raise TypeError(f"build(...) must return an nn.Module, got {type(model).__name__}")
    if _class_name(model) != plan.class_name:
        raise CheckpointError(
            plan_path, "class", f"this checkpoint holds a {plan.class_name}, but build(...) made a "
            f"{_class_name(model)}", "the class of the model that was pruned",
        )  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        before = check_attributes(plan, dict(model.named_modules()))
        inputs = build_inputs(plan.example_inputs) if example_inputs is None else example_inputs
        graph = trace(model, inputs)
        graph.load_pruning_history([tuple(step) for step in plan.removals])
        apply_removals(dict(model.named_modules()), plan.declared_removals, plan.attributes)  # type: ignore[arg-type]
        check_groups_after(plan, dict(model.named_modules()), before)
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(
            plan_path, "removals", f"the model build(...) made does not take them ({type(error).__name__}: "
            f"{str(error)[:160]})",
            "a model built with the same constructor arguments and dtype as the one that was pruned",
        ) from None  # fmt: skip
    finally:
        model.train(was_training)
    check_module_sizes(plan_path, model)
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    if shapes != plan.shapes:
        differ = sorted(n for n in set(shapes) | set(plan.shapes) if shapes.get(n) != plan.shapes.get(n))
        raise CheckpointError(
            plan_path,
            "shapes",
            f"after the plan's removals the model's tensors differ: {', '.join(differ[:5])}",
            "a model built with the same constructor arguments as the pruned model",
        )
    expected = model.state_dict()
    for name, tensor in state.items():
        if name not in expected or tuple(expected[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                weights_path, name, "not a tensor of the shrunk model", "the shapes in plan.json"
            )
    missing = [name for name in expected if name not in state]
    if missing:
        raise CheckpointError(weights_path, missing[0], "missing", "every tensor of the shrunk model")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    return model

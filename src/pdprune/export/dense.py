"""The pruned model as an ordinary safetensors checkpoint, zeros included, with checksums.

    pdprune.export.save_dense(model, "model.safetensors")
    pdprune.export.load_dense(MyModel(), "model.safetensors")        # checked
    safetensors.torch.load_model(MyModel(), "model.safetensors")     # also works, unchecked

Tied weights are stored once, as safetensors' own ``save_model`` stores them, so the stock
loader reads the file; :func:`load_dense` also checks each tensor's checksum and that the file
belongs to the model it is loaded into.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdprune.errors import CheckpointError
from pdprune.export.container import (
    DTYPES,
    SAFETENSORS_CODES,
    checksum_map,
    describe,
    open_checked,
    read_description,
    reading,
    stored_layout,
    untied_state,
    verified_tensor,
    warn_unverifiable,
)
from pdprune.integrity import tensor_digest
from pdprune.io import atomic_write

__all__ = ["dense_description", "load_dense", "read_dense", "save_dense", "write_dense"]

FORMAT = "pdprune-dense-1"


def save_dense(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """The pruned model as an ordinary safetensors checkpoint (zeros included), atomically;
    ``safetensors.torch.load_model(MyModel(), path)`` loads it into the stock class, and
    :func:`load_dense` does the same with every tensor's checksum checked."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"save_dense() takes the model (an nn.Module), got {type(model).__name__}; for a state dict use "
            f"safetensors.torch.save_file(state_dict, path) or pdprune.export.save_sparse"
        )
    return atomic_write(path, lambda tmp: write_dense(model, tmp))


def write_dense(model: nn.Module, path: Path) -> dict[str, Any]:
    """Write ``model``'s checkpoint to ``path`` (not atomically) and return its description."""
    from safetensors.torch import save_file

    _names, state, aliases = untied_state(model)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    description = dense_description(tensors, aliases)
    # safetensors' save_model names each dropped tie in the metadata; do the same.
    metadata = {"format": FORMAT, **aliases, **describe(description)}
    save_file(tensors, str(path), metadata=metadata)
    return description


def dense_description(tensors: dict[str, torch.Tensor], aliases: dict[str, str]) -> dict[str, Any]:
    return {
        "checksums": {name: tensor_digest(t) for name, t in tensors.items()},
        "layouts": {
            name: [str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in tensors.items()
        },
        "aliases": aliases,
    }


def read_dense(
    path: str | os.PathLike[str], *, verify: bool = True, expected: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The checked tensors of a dense checkpoint (tied names included) and its description (None
    for a plain safetensors file, which has no checksums to check). With ``expected`` (a model's
    state dict), names and shapes are compared from the header before any tensor is read."""
    path = Path(path)
    with open_checked(path) as f, reading(path):
        keys = list(f.keys())
        stored = set(keys)
        metadata = f.metadata() or {}
        if not {"format", "pdprune", "sha256"} & set(metadata):  # a plain safetensors file
            if verify:
                warn_unverifiable(path, "by safetensors directly, not by pdprune.export.save_dense")
            ties = {k: v for k, v in metadata.items() if k not in stored and v in stored}  # save_model's
            if expected is not None:
                _expect_names(path, f, keys, ties, expected)
            plain = {key: f.get_tensor(key) for key in keys}
            return plain | {name: plain[kept] for name, kept in ties.items()}, None
        description = read_description(path, f, FORMAT, "a pdprune dense checkpoint")
        checksums = checksum_map(path, description, stored)
        layouts, aliases = description.get("layouts"), description.get("aliases")
        if not isinstance(layouts, dict) or set(layouts) != stored:
            raise CheckpointError(
                path, "layouts", "missing or not the stored tensors", "dtype and shape of each"
            )
        if not isinstance(aliases, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k not in stored and v in stored
            for k, v in aliases.items()
        ):
            raise CheckpointError(path, "aliases", "malformed", "tied names, each naming a stored tensor")
        for key in keys:
            dtype, shape = layouts[key]
            found_shape, code = stored_layout(f, key)
            if [code, found_shape] != [SAFETENSORS_CODES.get(DTYPES.get(dtype)), shape]:  # type: ignore[arg-type]
                raise CheckpointError(
                    path, key, f"stored as {code} {found_shape}", f"{dtype} {shape}, as described"
                )
        if expected is not None:
            _expect_names(path, f, keys, aliases, expected)
        state = {key: verified_tensor(path, f, key, checksums, verify) for key in keys}
    for name, kept in aliases.items():
        state[name] = state[kept]
    return state, description


def _expect_names(
    path: Path, f: Any, keys: list[str], aliases: dict[str, str], expected: dict[str, torch.Tensor]
) -> None:
    """The file holds exactly the model's tensors, in the model's shapes (read from the header)."""
    shapes = {key: stored_layout(f, key)[0] for key in keys}
    shapes |= {name: shapes[kept] for name, kept in aliases.items()}
    for name, tensor in expected.items():
        if name not in shapes:
            raise CheckpointError(path, name, "missing", "every tensor of the model it is loaded into")
        if shapes[name] != list(tensor.shape):
            raise CheckpointError(
                path, name, f"shape {tuple(shapes[name])}", f"{tuple(tensor.shape)}, as the model has"
            )
    extra = [name for name in shapes if name not in expected]
    if extra:
        raise CheckpointError(path, extra[0], "not in the model", "a checkpoint of this model")


def load_dense(
    model: nn.Module, path: str | os.PathLike[str], *, verify: bool = True, strict: bool = True
) -> nn.Module:
    """Load a checkpoint written by :func:`save_dense` into ``model`` and return it.

    Each tensor's checksum is checked (``verify=False`` skips that), and a file whose names or
    shapes are not the model's raises :class:`pdprune.CheckpointError` before any weight changes.
    """
    expected = model.state_dict()
    state, _description = read_dense(path, verify=verify, expected=expected if strict else None)
    for name, tensor in expected.items():  # without strict, only the names both hold
        if name in state and tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(path, name, f"shape {tuple(state[name].shape)}", f"{tuple(tensor.shape)}")
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=strict)
    return model

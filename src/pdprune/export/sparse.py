"""Checkpoints of pruned models that are really smaller: a bitmask plus the packed nonzero values
per sparse tensor, in a safetensors file (no pickle), exact to the bit on the way back.

    pdprune.export.save_sparse(model, "model.sparse.safetensors")
    model.load_state_dict(pdprune.export.load_sparse("model.sparse.safetensors"))

A tensor is stored sparse when enough of it is zero to pay for the mask (one bit per element);
otherwise, and for integer or bool tensors, it is stored as it is. NaN counts as a value, and the
positions of any -0.0 are kept, so every bit comes back. Tensors that share memory (tied
weights) are stored once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pdprune.io import atomic_write

__all__ = ["load_sparse", "save_dense", "save_sparse", "sparse_size_report"]

FORMAT = "pdprune-sparse-1"


def _state(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(model_or_state, nn.Module):
        return dict(model_or_state.state_dict())
    if isinstance(model_or_state, Mapping):
        return dict(model_or_state)
    raise TypeError(f"expected an nn.Module or a state_dict, got {type(model_or_state).__name__}")


_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _zero_bits(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(is +-0.0, is -0.0) for a flat floating tensor of any width, from its bits: exact for every
    float dtype (float8 included), and NaN never counts as zero."""
    dtype = _INT[flat.element_size()]
    bits = flat.view(dtype)
    negative_zero = bits == torch.iinfo(dtype).min  # only the sign bit set
    return (bits == 0) | negative_zero, negative_zero


def save_sparse(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    min_sparsity: float | None = None,
) -> Path:
    """Write a compressed checkpoint of ``model_or_state`` (a model or a state_dict) to ``path``.

    A floating tensor is stored as a packed bitmask plus its nonzero values when that is
    smaller than storing it whole (or, with ``min_sparsity``, when at least that fraction is
    zero); everything else as it is. The write is atomic.
    """
    from safetensors.torch import save_file

    if min_sparsity is not None and not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    state = _state(model_or_state)
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, object]] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} is a {type(tensor).__name__}, not a tensor")
        # Tied tensors are found on the original memory (a GPU tensor's host copy is temporary,
        # and a later copy may reuse its address).
        key = (
            str(tensor.device),
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        if tensor.numel() and key in seen:
            entries[name] = {"alias": seen[key]}
            continue
        seen[key] = name
        tensor = tensor.detach().cpu()
        shape, dtype = list(tensor.shape), str(tensor.dtype).removeprefix("torch.")
        if tensor.is_floating_point() and tensor.numel():
            flat = tensor.contiguous().reshape(-1)
            zero, negative_zero = _zero_bits(flat)
            keep = ~zero
            kept, n, width = int(keep.sum()), flat.numel(), flat.element_size()
            any_negative = bool(negative_zero.any())
            sparse_bytes = n / 8 * (2 if any_negative else 1) + kept * width
            wanted = (
                (1.0 - kept / n >= min_sparsity) if min_sparsity is not None else sparse_bytes < n * width
            )
            if wanted and kept < n:
                tensors[f"{name}::mask"] = torch.from_numpy(np.packbits(keep.numpy()))
                tensors[f"{name}::values"] = flat[keep].contiguous()
                if any_negative:  # kept bit for bit, as a second bitmask
                    tensors[f"{name}::negzero"] = torch.from_numpy(np.packbits(negative_zero.numpy()))
                entries[name] = {"encoding": "bitmask", "shape": shape, "dtype": dtype}
                continue
        tensors[name] = tensor.contiguous()
        entries[name] = {"encoding": "dense", "shape": shape, "dtype": dtype}
    metadata = {"format": FORMAT, "tensors": json.dumps(entries)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_sparse(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a checkpoint written by :func:`save_sparse` back into a dense state_dict."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:
        raise ValueError(f"{path} is not a safetensors file ({error})") from None
    with handle as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not a pdprune sparse checkpoint (format {metadata.get('format')!r}); a plain "
                f"safetensors file loads with safetensors.torch.load_file"
            )
        entries = json.loads(metadata["tensors"])
        stored = set(f.keys())
        state: dict[str, torch.Tensor] = {}
        for name, entry in entries.items():
            if "alias" in entry:
                continue
            if entry["encoding"] == "dense":
                state[name] = f.get_tensor(name)
                continue
            shape = entry["shape"]
            numel = int(np.prod(shape)) if shape else 1
            keep = torch.from_numpy(
                np.unpackbits(f.get_tensor(f"{name}::mask").numpy(), count=numel).astype(bool)
            )
            values = f.get_tensor(f"{name}::values")
            bits_dtype = _INT[values.element_size()]  # rebuilt bit for bit, which works for every float dtype
            dense = torch.zeros(numel, dtype=bits_dtype)
            dense[keep] = values.view(bits_dtype)
            if f"{name}::negzero" in stored:
                negative = np.unpackbits(f.get_tensor(f"{name}::negzero").numpy(), count=numel).astype(bool)
                dense[torch.from_numpy(negative)] = torch.iinfo(bits_dtype).min
            state[name] = dense.view(values.dtype).reshape(shape)
        for name, entry in entries.items():
            if "alias" in entry:
                state[name] = state[entry["alias"]]
    moved = {name: state[name].to(device) for name, entry in entries.items() if "alias" not in entry}
    return {
        name: moved[entry["alias"]] if "alias" in entry else moved[name] for name, entry in entries.items()
    }


def save_dense(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """The pruned model as an ordinary safetensors checkpoint (zeros included), atomically;
    ``safetensors.torch.load_model(MyModel(), path)`` loads it into the stock class."""
    from safetensors.torch import save_model

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"save_dense() takes the model (an nn.Module), got {type(model).__name__}; for a state dict use "
            f"safetensors.torch.save_file(state_dict, path) or pdprune.export.save_sparse"
        )
    return atomic_write(path, lambda tmp: save_model(model, str(tmp)))


def sparse_size_report(
    path_dense: str | os.PathLike[str], path_sparse: str | os.PathLike[str]
) -> dict[str, float]:
    """File sizes of a dense and a sparse checkpoint of the same model, and their ratio."""
    dense, sparse = Path(path_dense).stat().st_size, Path(path_sparse).stat().st_size
    return {"dense_bytes": dense, "sparse_bytes": sparse, "ratio": sparse / dense}

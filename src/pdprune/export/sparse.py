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

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pdprune.errors import CheckpointError
from pdprune.export.container import (
    SAFETENSORS_CODES,
    checked_dtype,
    checked_shape,
    checksum_map,
    describe,
    numel,
    open_checked,
    parse_json,
    read_description,
    reading,
    stored_layout,
    untied_state,
    verified_tensor,
    warn_unverifiable,
)
from pdprune.integrity import tensor_digest
from pdprune.io import atomic_write

__all__ = ["load_sparse", "save_sparse", "sparse_size_report"]

FORMAT = "pdprune-sparse-2"
LEGACY_FORMAT = "pdprune-sparse-1"


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
    names, state, aliases = untied_state(model_or_state)
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, object]] = {name: {"alias": kept} for name, kept in aliases.items()}
    for name, tensor in state.items():
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
                _put(tensors, f"{name}::mask", torch.from_numpy(np.packbits(keep.numpy())))
                _put(tensors, f"{name}::values", flat[keep].contiguous())
                if any_negative:  # kept bit for bit, as a second bitmask
                    _put(tensors, f"{name}::negzero", torch.from_numpy(np.packbits(negative_zero.numpy())))
                entries[name] = {"encoding": "bitmask", "shape": shape, "dtype": dtype}
                continue
        _put(tensors, name, tensor.contiguous())
        entries[name] = {"encoding": "dense", "shape": shape, "dtype": dtype}
    entries = {name: entries[name] for name in names}
    checksums = {key: tensor_digest(tensor) for key, tensor in tensors.items()}
    metadata = {"format": FORMAT, **describe({"names": names, "tensors": entries, "checksums": checksums})}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _put(tensors: dict[str, torch.Tensor], key: str, tensor: torch.Tensor) -> None:
    if key in tensors:
        raise ValueError(
            f"cannot store {key!r}: the name is taken by the compressed parts of another tensor "
            "(NAME::mask, NAME::values, NAME::negzero); rename it, or save with save_dense"
        )
    tensors[key] = tensor


def load_sparse(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", *, verify: bool = True
) -> dict[str, torch.Tensor]:
    """Read a checkpoint written by :func:`save_sparse` back into a dense state_dict.

    Every field is checked before anything is allocated (a tensor cannot expand beyond what its
    bitmask encodes), and each stored tensor's checksum when it is read (``verify=False`` skips
    that for speed). A bad file raises :class:`pdprune.CheckpointError` naming the field.
    """
    path = Path(path)
    with open_checked(path) as f, reading(path):
        description = read_description(
            path, f, FORMAT, "a pdprune sparse checkpoint",
            "; a plain safetensors file loads with safetensors.torch.load_file", legacy=(LEGACY_FORMAT,),
        )  # fmt: skip
        stored = set(f.keys())
        if description is None:  # written before checksums
            if verify:
                warn_unverifiable(path, "by an earlier pdprune (format pdprune-sparse-1)")
            entries, checksums = _legacy_entries(path, f), None
        else:
            entries = _in_order(path, description.get("tensors"), description.get("names"))
            checksums = checksum_map(path, description, stored)
        plans = _checked_entries(path, f, entries, stored)
        # Every byte is checked before anything is expanded, and expanded from the very bytes that
        # were checked: the stored pieces (together the file's size) are held, then expanded.
        pieces = {
            name: _checked_pieces(path, f, name, plan, checksums, verify) for name, plan in plans.items()
        }
    state = {name: _expand(plans[name], held) for name, held in pieces.items() if held}
    moved = {name: tensor.to(device) for name, tensor in state.items()}
    return {
        name: moved[plan.alias] if plan.alias is not None else moved[name] for name, plan in plans.items()
    }


def _in_order(path: Path, entries: Any, names: Any) -> Any:
    """The entries in the state dict's order (the description's JSON is stored with sorted keys)."""
    if (
        not isinstance(entries, dict)
        or not isinstance(names, list)
        or sorted(map(str, names)) != sorted(entries)
    ):
        raise CheckpointError(
            path, "names", "missing or not the described tensors", "every tensor's name, once"
        )
    return {name: entries[name] for name in names}


@dataclass(frozen=True)
class _Entry:
    encoding: str
    shape: list[int]
    dtype: torch.dtype
    alias: str | None = None
    negzero: bool = False


def _legacy_entries(path: Path, f: Any) -> Any:
    text = (f.metadata() or {}).get("tensors")
    if not isinstance(text, str):
        raise CheckpointError(path, "tensors", "missing from the metadata", "a JSON description")
    return parse_json(path, "tensors", text)


def _checked_entries(path: Path, f: Any, entries: Any, stored: set[str]) -> dict[str, _Entry]:
    """Each tensor's description, checked against the stored tensors' headers (no data read)."""
    if not isinstance(entries, dict):
        raise CheckpointError(path, "tensors", "missing or not a JSON object", "a description per tensor")
    plans: dict[str, _Entry] = {}
    expected: set[str] = set()
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise CheckpointError(path, name, f"description is a {type(entry).__name__}", "a JSON object")
        if "alias" in entry:
            target = entry["alias"]
            if (
                set(entry) != {"alias"}
                or not isinstance(target, str)
                or "alias" in entries.get(target, {"alias": 0})
            ):
                raise CheckpointError(
                    path, f"{name}.alias", f"{str(target)[:60]!r}", "a stored tensor's name"
                )
            plans[name] = _Entry("alias", [], torch.float32, alias=target)
            continue
        encoding = entry.get("encoding")
        shape = checked_shape(path, f"{name}.shape", entry.get("shape"))
        dtype = checked_dtype(path, f"{name}.dtype", entry.get("dtype"))
        count = numel(shape)
        if encoding == "dense":
            _expect_layout(path, f, name, name, stored, shape, dtype)
            expected.add(name)
            plans[name] = _Entry("dense", shape, dtype)
        elif encoding == "bitmask":
            if not dtype.is_floating_point or count == 0:
                raise CheckpointError(
                    path, f"{name}.dtype", f"a bitmask of {dtype} x {count}", "a floating tensor"
                )
            mask_bytes = (count + 7) // 8
            _expect_layout(path, f, name, f"{name}::mask", stored, [mask_bytes], torch.uint8)
            values = f"{name}::values"
            if values not in stored:
                raise CheckpointError(path, values, "missing", "the tensor's nonzero values")
            shape_v, _ = stored_layout(f, values)
            if len(shape_v) != 1 or shape_v[0] > count:
                raise CheckpointError(
                    path, values, f"shape {shape_v}", f"a 1-d tensor of at most {count} values"
                )
            _expect_layout(path, f, name, values, stored, shape_v, dtype)
            negzero = f"{name}::negzero" in stored
            if negzero:
                _expect_layout(path, f, name, f"{name}::negzero", stored, [mask_bytes], torch.uint8)
            expected |= {f"{name}::mask", values} | ({f"{name}::negzero"} if negzero else set())
            plans[name] = _Entry("bitmask", shape, dtype, negzero=negzero)
        else:
            raise CheckpointError(path, f"{name}.encoding", f"{str(encoding)[:40]!r}", "'dense' or 'bitmask'")
    extra = sorted(stored - expected)
    if extra:
        raise CheckpointError(path, extra[0], "stored but described by no entry", "only described tensors")
    return plans


def _expect_layout(
    path: Path, f: Any, name: str, key: str, stored: set[str], shape: list[int], dtype: torch.dtype
) -> None:
    if key not in stored:
        raise CheckpointError(path, key, "missing", f"the stored data of {name}")
    found_shape, found_dtype = stored_layout(f, key)
    code = SAFETENSORS_CODES[dtype]
    if found_shape != shape or found_dtype != code:
        raise CheckpointError(
            path,
            key,
            f"stored as {found_dtype} {found_shape}",
            f"{code or dtype} {shape}, as its description says",
        )


_POPCOUNT = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)


def _checked_pieces(
    path: Path, f: Any, name: str, plan: _Entry, checksums: dict[str, str] | None, verify: bool
) -> dict[str, torch.Tensor]:
    """The stored tensors of one entry, each checked against its checksum and its description,
    and a bitmask against its values and its tensor's size."""
    if plan.encoding == "alias":
        return {}
    if plan.encoding == "dense":
        tensor = verified_tensor(path, f, name, checksums, verify)
        if tensor.dtype != plan.dtype or list(tensor.shape) != plan.shape:
            raise CheckpointError(
                path, name, f"stored as {tensor.dtype} {list(tensor.shape)}", f"{plan.dtype} {plan.shape}"
            )
        return {"dense": tensor}
    count = numel(plan.shape)
    mask = verified_tensor(path, f, f"{name}::mask", checksums, verify)
    if _padding(mask, count):
        raise CheckpointError(path, f"{name}::mask", "bits set past the tensor's end", "zero padding")
    kept = int(_POPCOUNT[mask.numpy()].sum(dtype=np.int64))
    values = verified_tensor(path, f, f"{name}::values", checksums, verify)
    if values.dtype != plan.dtype:
        raise CheckpointError(path, f"{name}::values", f"stored as {values.dtype}", f"{plan.dtype}")
    if kept != values.numel():
        raise CheckpointError(
            path, f"{name}::values", f"{values.numel()} values for {kept} mask bits", f"{kept}"
        )
    held = {"mask": mask, "values": values}
    if plan.negzero:
        negative = verified_tensor(path, f, f"{name}::negzero", checksums, verify)
        if _padding(negative, count) or (negative.numpy() & mask.numpy()).any():
            raise CheckpointError(
                path, f"{name}::negzero", "bits outside the tensor's zeros", "a subset of the zeros"
            )
        held["negzero"] = negative
    return held


def _padding(packed: torch.Tensor, count: int) -> int:
    """The bits of the last byte past ``count`` elements (np.packbits fills bytes high bit first)."""
    return int(packed[-1]) & ((1 << (8 - count % 8)) - 1) if count % 8 else 0


def _expand(plan: _Entry, held: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense tensor from its checked pieces, bit for bit."""
    if "dense" in held:
        return held["dense"]
    count = numel(plan.shape)
    keep = torch.from_numpy(np.unpackbits(held["mask"].numpy(), count=count).astype(bool))
    values = held["values"]
    bits_dtype = _INT[values.element_size()]  # rebuilt bit for bit, which works for every float dtype
    dense = torch.zeros(count, dtype=bits_dtype)
    dense[keep] = values.view(bits_dtype)
    if "negzero" in held:
        negative = np.unpackbits(held["negzero"].numpy(), count=count).astype(bool)
        dense[torch.from_numpy(negative)] = torch.iinfo(bits_dtype).min
    return dense.view(plan.dtype).reshape(plan.shape)


def sparse_size_report(
    path_dense: str | os.PathLike[str], path_sparse: str | os.PathLike[str]
) -> dict[str, float]:
    """File sizes of a dense and a sparse checkpoint of the same model, and their ratio."""
    dense, sparse = Path(path_dense).stat().st_size, Path(path_sparse).stat().st_size
    return {"dense_bytes": dense, "sparse_bytes": sparse, "ratio": sparse / dense}

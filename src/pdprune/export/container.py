"""The safetensors container under pdprune's checkpoints: checksummed metadata, checked reads.

Every pdprune file keeps its description in one metadata entry, ``pdprune`` (canonical JSON,
holding a SHA-256 per stored tensor), and the SHA-256 of that text in ``sha256``. A reader checks
the description before it allocates anything and each tensor's bytes as it reads them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdprune.errors import CheckpointError
from pdprune.integrity import canonical_json, tensor_digest, text_digest
from pdprune.sharding import is_sharded

__all__ = [
    "DTYPES",
    "SAFETENSORS_CODES",
    "checked_dtype",
    "checked_shape",
    "checksum_map",
    "describe",
    "numel",
    "open_checked",
    "parse_json",
    "read_description",
    "reading",
    "stored_layout",
    "untied_state",
    "verified_tensor",
    "warn_unverifiable",
]

MAX_DESCRIPTION_BYTES = 64 * 2**20
MAX_DIMS = 32

#: Every dtype a pdprune file may hold, by name, with its safetensors code.
SAFETENSORS_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.complex64: "C64",
    **{getattr(torch, name): code for name, code in (
        ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
        ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"),
    ) if hasattr(torch, name)},
}  # fmt: skip
DTYPES: dict[str, torch.dtype] = {str(dtype).removeprefix("torch."): dtype for dtype in SAFETENSORS_CODES}

#: Errors a loader's own checks do not raise but a malformed file can still provoke deep inside
#: parsing or tensor code; inside :func:`reading` they become a CheckpointError naming the file.
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, RuntimeError)


@contextmanager
def reading(path: Path, field: str = "file") -> Iterator[None]:
    """Turn any error a malformed file provokes while it is read into a :class:`CheckpointError`."""
    try:
        yield
    except CheckpointError:
        raise
    except _MALFORMED as error:
        raise CheckpointError(
            path, field, f"malformed ({type(error).__name__}: {str(error)[:160]})", "a file pdprune wrote"
        ) from None


def untied_state(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
) -> tuple[list[str], dict[str, torch.Tensor], dict[str, str]]:
    """Every name in order, the tensors to store, and the names that are the same tensor as a stored
    one (tied weights, found on the original memory: a GPU tensor's host copy is temporary and its
    address may be reused)."""
    if isinstance(model_or_state, nn.Module):
        state = dict(model_or_state.state_dict())
    elif isinstance(model_or_state, Mapping):
        state = dict(model_or_state)
    else:
        raise TypeError(f"expected an nn.Module or a state_dict, got {type(model_or_state).__name__}")
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} is a {type(tensor).__name__}, not a tensor")
        if is_sharded(tensor):
            raise ValueError(
                f"{name} is sharded across ranks (FSDP2): a checkpoint needs whole tensors. Gather them "
                "first on every rank, state = get_model_state_dict(model, options=StateDictOptions("
                "full_state_dict=True, cpu_offload=True)) from torch.distributed.checkpoint.state_dict; "
                "then, on rank 0, pass that state to save_sparse, or load it into an unsharded model "
                "for save_dense"
            )
        key = (
            str(tensor.device),
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        stored[name] = tensor
    return list(state), stored, aliases


def describe(description: dict[str, Any]) -> dict[str, str]:
    """Metadata entries for ``description``: its canonical text and that text's SHA-256."""
    text = canonical_json(description)
    return {"pdprune": text, "sha256": text_digest(text)}


@contextmanager
def open_checked(path: Path) -> Iterator[Any]:
    """A safetensors handle on ``path``; a file safetensors refuses (truncated, garbage appended,
    a broken header) is a :class:`CheckpointError` naming the file."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:  # safetensors raises its own error types and OSError
        raise CheckpointError(
            path, "header", f"not a readable safetensors file ({str(error)[:200]})",
            "a whole file written by pdprune",
        ) from None  # fmt: skip
    with handle as f:
        yield f


def read_description(
    path: Path, f: Any, format_name: str, what: str, hint: str = "", legacy: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """The checked ``pdprune`` description of an open file of ``format_name`` (``what`` names it
    for the error), or None for a file of a ``legacy`` format (written before checksums)."""
    metadata = f.metadata() or {}
    found = metadata.get("format")
    if found in legacy:
        if {"pdprune", "sha256"} & set(metadata):  # a newer file whose format field was damaged
            raise CheckpointError(path, "format", f"{found!r} beside checksums", repr(format_name))
        return None
    if found != format_name:
        raise CheckpointError(path, "format", f"{found!r}: not {what}", f"{format_name!r}{hint}")
    text, digest = metadata.get("pdprune"), metadata.get("sha256")
    if not isinstance(text, str) or not isinstance(digest, str):
        raise CheckpointError(path, "metadata", "the description or its checksum is missing", "both")
    if len(text) > MAX_DESCRIPTION_BYTES:
        raise CheckpointError(path, "metadata", f"{len(text)} bytes", f"at most {MAX_DESCRIPTION_BYTES}")
    if text_digest(text) != digest:
        raise CheckpointError(path, "metadata", "its checksum does not match (the file is corrupt)", digest)
    description = parse_json(path, "metadata", text)
    if not isinstance(description, dict):
        raise CheckpointError(path, "metadata", f"a {type(description).__name__}", "a JSON object")
    return description


def parse_json(path: Path, field: str, text: str | bytes) -> Any:
    """Strict JSON: no NaN or infinities (JSON has none), bounded nesting and number sizes."""
    try:
        return json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError, UnicodeDecodeError) as error:  # JSONDecodeError, int limits
        raise CheckpointError(path, field, f"not valid JSON ({str(error)[:120]})") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def checked_dtype(path: Path, field: str, value: Any) -> torch.dtype:
    if not isinstance(value, str) or value not in DTYPES:
        raise CheckpointError(
            path, field, f"unknown dtype {str(value)[:40]!r}", "one of " + ", ".join(DTYPES)
        )
    return DTYPES[value]


def checked_shape(path: Path, field: str, value: Any) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_DIMS
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    ):
        raise CheckpointError(
            path, field, f"shape {str(value)[:60]}", f"a list of at most {MAX_DIMS} non-negative integers"
        )
    return value


def numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def stored_layout(f: Any, key: str) -> tuple[list[int], str]:
    """Shape and safetensors dtype code of a stored tensor, read from the header (no data)."""
    piece = f.get_slice(key)
    return list(piece.get_shape()), str(piece.get_dtype())


def verified_tensor(
    path: Path, f: Any, key: str, checksums: Mapping[str, Any] | None, verify: bool
) -> torch.Tensor:
    """The stored tensor ``key``, its SHA-256 checked when ``verify`` and the file has checksums."""
    tensor = f.get_tensor(key)
    if verify and checksums is not None and tensor_digest(tensor) != checksums.get(key):
        raise CheckpointError(
            path, key, "its bytes do not match the checksum saved with them (the file is corrupt)",
            "the bytes that were saved; pass verify=False only to read a file you know is damaged",
        )  # fmt: skip
    return tensor


def warn_unverifiable(path: Path, what: str) -> None:
    warnings.warn(
        f"{path} was written {what}, without checksums: corruption cannot be detected; save it again "
        "to add them",
        UserWarning,
        stacklevel=3,
    )


def checksum_map(path: Path, description: dict[str, Any], stored: set[str]) -> dict[str, str]:
    """The description's per-tensor checksums, one for every stored tensor and no others."""
    checksums = description.get("checksums")
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise CheckpointError(path, "checksums", "missing or malformed", "a SHA-256 per stored tensor")
    if set(checksums) != stored:
        odd = sorted(set(checksums) ^ stored)
        raise CheckpointError(
            path, odd[0], "stored without a checksum" if odd[0] in stored else "has a checksum but no data",
            "the tensors the file was written with",
        )  # fmt: skip
    return checksums

"""Example inputs as JSON: what a channel pruner traced with, recorded so a shrunk model can be
traced again on inputs of the same form when it is loaded."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["build_inputs", "input_spec"]


def input_spec(value: Any) -> Any:
    """A JSON description of example inputs (shapes and dtypes of tensors; plain values as they
    are), from which :func:`load_shrunk` rebuilds inputs of the same form to trace with."""
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, dict):
        return {"dict": {str(k): input_spec(v) for k, v in value.items()}}
    if isinstance(value, (tuple, list)):
        return {"list": [input_spec(v) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(
        "example inputs must be tensors, plain values (None, bool, int, float, str) or tuples/lists/dicts "
        "of them, "
        f"not {type(value).__name__}"
    )


def build_inputs(spec: Any) -> Any:
    if "tensor" in spec:
        return torch.zeros(spec["tensor"], dtype=getattr(torch, spec["dtype"]))
    if "value" in spec:
        return spec["value"]
    if "dict" in spec:
        return {k: build_inputs(v) for k, v in spec["dict"].items()}
    return tuple(build_inputs(v) for v in spec["list"])

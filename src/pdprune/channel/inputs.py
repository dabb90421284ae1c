"""Example inputs as JSON: what a channel pruner traced with, recorded so a shrunk model can be
traced again on inputs of the same form when it is loaded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["build_inputs", "input_spec", "one_batch", "plain_inputs"]


def plain_inputs(value: Any) -> Any:
    """Example inputs with every mapping made a plain dict: a tokenizer's ``BatchEncoding`` is a
    mapping of keyword arguments, not a dict."""
    if isinstance(value, Mapping):
        return {key: plain_inputs(item) for key, item in value.items()}
    if type(value) in (tuple, list):
        return type(value)(plain_inputs(item) for item in value)
    return value


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


def one_batch(spec: Any) -> Any:
    """The spec with the batch dimension cut to 1, when every tensor in it has the same first size
    (the usual batch): a plan stores one example, not a whole batch, to stay small."""
    shapes: list[list[int]] = []

    def collect(node: Any) -> None:
        if "tensor" in node:
            shapes.append(node["tensor"])
        for child in node.get("list", []):
            collect(child)
        for child in node.get("dict", {}).values():
            collect(child)

    collect(spec)
    if not shapes or any(not shape for shape in shapes) or len({shape[0] for shape in shapes}) != 1:
        return spec

    def cut(node: Any) -> Any:
        if "tensor" in node:
            return {**node, "tensor": [1, *node["tensor"][1:]]}
        if "list" in node:
            return {"list": [cut(child) for child in node["list"]]}
        if "dict" in node:
            return {"dict": {key: cut(child) for key, child in node["dict"].items()}}
        return node

    return cut(spec)

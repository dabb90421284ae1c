"""The shape plan of a shrunk model, read as data: every field checked before it touches a model.

A plan may only remove channels and set the size attributes that pdprune recorded for declared
groups (attention heads, user-declared groups): integers, named at save time, each checked
against the module's type and, after the removals, against the weights' shapes. Example inputs
are small (one batch) and capped, so a plan cannot make the loader allocate more than a bounded
amount.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pdprune.errors import CheckpointError
from pdprune.export.container import DTYPES, MAX_DIMS, numel
from pdprune.integrity import canonical_json, text_digest

__all__ = [
    "LEGACY_PLAN_FORMAT",
    "MAX_EXAMPLE_ELEMENTS",
    "PLAN_FORMAT",
    "Plan",
    "check_attributes",
    "check_module_sizes",
    "read_plan",
    "seal",
]

PLAN_FORMAT = 2
LEGACY_PLAN_FORMAT = 1
KIND = "pdprune shrunk model"
MAX_PLAN_BYTES = 16 * 2**20
MAX_EXAMPLE_ELEMENTS = 2**21
MAX_EXAMPLE_LEAVES = 64
MAX_EXAMPLE_DEPTH = 8


@dataclass(frozen=True)
class Plan:
    """A checked plan. ``groups`` is None for a plan of the first format, which did not name them."""

    path: Path
    class_name: str
    removals: list[tuple[str, bool, list[int]]]
    declared_removals: list[tuple[str, bool | str, list[int]]]
    attributes: dict[str, int]
    groups: list[dict[str, Any]] | None
    example_inputs: Any
    shapes: dict[str, list[int]]
    weights: str | None


def seal(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan with its checksum: SHA-256 of its canonical JSON without the checksum."""
    return {**plan, "checksum": text_digest(canonical_json(plan))}


def read_plan(path: Path) -> Plan:
    """Parse and check ``plan.json``; a bad one raises :class:`CheckpointError` naming the field."""
    size = path.stat().st_size
    if size > MAX_PLAN_BYTES:
        raise CheckpointError(path, "size", f"{size} bytes", f"at most {MAX_PLAN_BYTES}")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(
            path, "json", f"not valid JSON ({str(error)[:120]})", "the plan save_shrunk wrote"
        ) from None
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise CheckpointError(path, "kind", "not a pdprune shrunk-model plan", repr(KIND))
    version = raw.get("format")
    if version == PLAN_FORMAT:
        body = {k: v for k, v in raw.items() if k != "checksum"}
        if raw.get("checksum") != text_digest(canonical_json(body)):
            raise CheckpointError(path, "checksum", "does not match the plan (the file is corrupt or edited)")
    elif version != LEGACY_PLAN_FORMAT or isinstance(version, bool):
        raise CheckpointError(
            path, "format", f"{str(version)[:20]}", f"{PLAN_FORMAT} (or {LEGACY_PLAN_FORMAT})"
        )
    for key in ("class", "removals", "declared", "example_inputs", "shapes"):
        if key not in raw:
            raise CheckpointError(path, key, "missing", "every field save_shrunk writes")
    class_name = raw["class"]
    if not isinstance(class_name, str):
        raise CheckpointError(path, "class", f"a {type(class_name).__name__}", "a class name")
    declared = raw["declared"]
    if not isinstance(declared, dict) or not {"removals", "attributes"} <= set(declared):
        raise CheckpointError(path, "declared", "malformed", "removals and attributes")
    groups = _groups(path, declared.get("groups")) if version == PLAN_FORMAT else None
    weights = raw.get("weights") if version == PLAN_FORMAT else None
    if version == PLAN_FORMAT and not isinstance(weights, str):
        raise CheckpointError(path, "weights", "missing", "the checksum of model.safetensors' description")
    _check_example(path, raw["example_inputs"])
    return Plan(
        path=path,
        class_name=class_name,
        removals=_removals(path, "removals", raw["removals"], allow_heads=False),  # type: ignore[arg-type]
        declared_removals=_removals(path, "declared.removals", declared["removals"], allow_heads=True),
        attributes=_attributes(path, declared["attributes"]),
        groups=groups,
        example_inputs=raw["example_inputs"],
        shapes=_shapes(path, raw["shapes"]),
        weights=weights,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _removals(
    path: Path, field: str, value: Any, allow_heads: bool
) -> list[tuple[str, bool | str, list[int]]]:
    if not isinstance(value, list):
        raise CheckpointError(path, field, f"a {type(value).__name__}", "a list of removals")
    removals = []
    for i, step in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(step, list) or len(step) != 3:
            raise CheckpointError(path, where, "malformed", "[layer name, side, channel indices]")
        name, side, indices = step
        sides_ok = isinstance(side, bool) or (allow_heads and side == "heads")
        if not isinstance(name, str) or not sides_ok or not isinstance(indices, list):
            raise CheckpointError(path, where, "malformed", "[layer name, side, channel indices]")
        if not all(_is_int(j) and j >= 0 for j in indices) or len(set(indices)) != len(indices):
            raise CheckpointError(
                path, f"{where} indices", "negative, repeated or not integers", "distinct indices >= 0"
            )
        removals.append((name, side, indices))
    return removals


def _attributes(path: Path, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise CheckpointError(path, "declared.attributes", f"a {type(value).__name__}", "a JSON object")
    for key, size in value.items():
        attribute = key.rpartition(".")[2]
        if not attribute.isidentifier() or attribute.startswith("_"):
            raise CheckpointError(
                path, f"declared.attributes.{key}", "not a public attribute name", "a size attribute"
            )
        if not _is_int(size) or size < 1:
            raise CheckpointError(
                path, f"declared.attributes.{key}", f"{str(size)[:40]}", "a positive integer"
            )
    return dict(value)


def _groups(path: Path, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise CheckpointError(path, "declared.groups", "missing or malformed", "a list of declared groups")
    for i, group in enumerate(value):
        where = f"declared.groups[{i}]"
        if not isinstance(group, dict) or set(group) != {"name", "units", "kept", "width", "counts"}:
            raise CheckpointError(path, where, "malformed", "name, units, kept, width and counts")
        units, kept, width, counts = group["units"], group["kept"], group["width"], group["counts"]
        if not all(_is_int(v) for v in (units, kept, width)) or not 1 <= kept <= units or width < 1:
            raise CheckpointError(path, where, "sizes out of range", "1 <= kept <= units, width >= 1")
        if not isinstance(counts, dict) or not all(v in ("units", "channels") for v in counts.values()):
            raise CheckpointError(path, f"{where}.counts", "malformed", "attribute -> 'units' or 'channels'")
    return value


def _shapes(path: Path, value: Any) -> dict[str, list[int]]:
    if not isinstance(value, dict) or not all(
        isinstance(s, list) and len(s) <= MAX_DIMS and all(_is_int(d) and d >= 0 for d in s)
        for s in value.values()
    ):
        raise CheckpointError(path, "shapes", "malformed", "tensor name -> list of sizes")
    return value


def _check_example(path: Path, spec: Any) -> None:
    """Example inputs are shapes to build zeros from: bounded in depth, count and total size."""
    leaves: list[int] = []

    def visit(node: Any, depth: int, where: str) -> None:
        if depth > MAX_EXAMPLE_DEPTH or len(leaves) > MAX_EXAMPLE_LEAVES:
            raise CheckpointError(
                path, where, "nested too deep or too many inputs", f"at most {MAX_EXAMPLE_LEAVES}"
            )
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise CheckpointError(path, where, "malformed", "a tensor, value, list or dict spec")
        if "tensor" in node:
            shape, dtype = node["tensor"], node.get("dtype")
            if set(node) != {"tensor", "dtype"} or dtype not in DTYPES:
                raise CheckpointError(path, where, f"dtype {str(dtype)[:30]!r}", "a known dtype")
            if (
                not isinstance(shape, list)
                or len(shape) > MAX_DIMS
                or not all(_is_int(d) and d >= 0 for d in shape)
            ):
                raise CheckpointError(path, where, f"shape {str(shape)[:60]}", "non-negative sizes")
            leaves.append(numel(shape))
        elif "value" in node:
            value = node["value"]
            if len(node) != 1 or not (value is None or isinstance(value, (bool, int, float)) or
                                      (isinstance(value, str) and len(value) <= 1000)):  # fmt: skip
                raise CheckpointError(path, where, "malformed value", "None, a number or a short string")
            leaves.append(0)
        elif "list" in node and len(node) == 1 and isinstance(node["list"], list):
            for i, item in enumerate(node["list"]):
                visit(item, depth + 1, f"{where}[{i}]")
        elif "dict" in node and len(node) == 1 and isinstance(node["dict"], dict):
            for key, item in node["dict"].items():
                visit(item, depth + 1, f"{where}.{key}")
        else:
            raise CheckpointError(path, where, "malformed", "a tensor, value, list or dict spec")

    visit(spec, 0, "example_inputs")
    total = sum(leaves)
    if total > MAX_EXAMPLE_ELEMENTS:
        raise CheckpointError(
            path, "example_inputs", f"{total} elements", f"at most {MAX_EXAMPLE_ELEMENTS} (one small batch)"
        )


def check_attributes(plan: Plan, modules: dict[str, nn.Module]) -> None:
    """Before any removal: each size attribute the plan sets is one a recorded group names, an
    int attribute of its module today, and shrinks (never grows) it, by the group's own count."""
    expected: dict[str, int] = {}
    before: dict[str, int] = {}
    for group in plan.groups or []:
        for key, kind in group["counts"].items():
            factor = 1 if kind == "units" else group["width"]
            expected[key], before[key] = group["kept"] * factor, group["units"] * factor
    for key, size in plan.attributes.items():
        field = f"declared.attributes.{key}"
        owner_name, _, attribute = key.rpartition(".")
        owner = modules.get(owner_name)
        current = vars(owner).get(attribute) if owner is not None else None
        if owner is None or not _is_int(current):
            raise CheckpointError(
                plan.path,
                field,
                f"{owner_name or 'the model'} has no int attribute {attribute!r}",
                "a size attribute",
            )
        if plan.groups is not None:
            if key not in expected:
                raise CheckpointError(plan.path, field, "not named by any declared group of the plan")
            if size != expected[key] or current != before[key]:
                raise CheckpointError(
                    plan.path,
                    field,
                    f"{current} -> {size}",
                    f"{before[key]} -> {expected[key]}, as the group records",
                )
        elif size > current:
            raise CheckpointError(
                plan.path, field, f"{current} -> {size}", "a removal, which only shrinks sizes"
            )


def check_module_sizes(path: Path, model: nn.Module) -> None:
    """After the removals: the standard layers' size attributes agree with their weights' shapes."""
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        sizes: dict[str, int] = {}
        if isinstance(module, nn.Linear) and weight is not None:
            sizes = {"out_features": weight.shape[0], "in_features": weight.shape[1]}
        elif isinstance(module, nn.modules.conv._ConvNd) and weight is not None:
            first, second = weight.shape[0], weight.shape[1] * module.groups
            out, into = (second, first) if module.transposed else (first, second)
            sizes = {"out_channels": out, "in_channels": into}
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            tensor = weight if weight is not None else getattr(module, "running_mean", None)
            if tensor is not None:
                sizes = {"num_features": tensor.shape[0]}
        elif isinstance(module, nn.Embedding):
            sizes = {"num_embeddings": weight.shape[0], "embedding_dim": weight.shape[1]}
        for attribute, size in sizes.items():
            if getattr(module, attribute) != size:
                raise CheckpointError(
                    path, f"{name}.{attribute}", f"{getattr(module, attribute)} after the plan's removals",
                    f"{size}, as the layer's weights have",
                )  # fmt: skip

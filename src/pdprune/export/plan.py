"""The shape plan of a shrunk model, read as data: every field checked before it touches a model.

A plan may only remove channels and set the size attributes that pdprune recorded for declared
groups (attention heads, user-declared groups): integers, named at save time, each checked
against the module's type and, after the removals, against the weights' shapes. Example inputs
are small (one batch) and capped, so a plan cannot make the loader allocate more than a bounded
amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdprune.errors import CheckpointError
from pdprune.export.container import DTYPES, MAX_DIMS, numel, parse_json, reading
from pdprune.integrity import canonical_json, text_digest
from pdprune.patterns.specs import is_transformers_conv1d

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


@dataclass(frozen=True)
class Before:
    """Sizes before the removals: the shrunk layers' outputs and the attributes the plan sets."""

    outputs: dict[str, int | None]
    attributes: dict[str, int]


def seal(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan with its checksum: SHA-256 of its canonical JSON without the checksum."""
    return {**plan, "checksum": text_digest(canonical_json(plan))}


def read_plan(path: Path) -> Plan:
    """Parse and check ``plan.json``; a bad one raises :class:`CheckpointError` naming the field."""
    with reading(path, "plan"):
        return _read_plan(path)


def _read_plan(path: Path) -> Plan:
    size = path.stat().st_size
    if size > MAX_PLAN_BYTES:
        raise CheckpointError(path, "size", f"{size} bytes", f"at most {MAX_PLAN_BYTES}")
    raw = parse_json(path, "json", path.read_bytes())
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise CheckpointError(path, "kind", "not a pdprune shrunk-model plan", repr(KIND))
    version = raw.get("format")
    if version == PLAN_FORMAT:
        body = {k: v for k, v in raw.items() if k != "checksum"}
        if raw.get("checksum") != text_digest(canonical_json(body)):
            raise CheckpointError(path, "checksum", "does not match the plan (the file is corrupt or edited)")
    elif (
        version == LEGACY_PLAN_FORMAT and not isinstance(version, bool) and {"checksum", "weights"} & set(raw)
    ):
        raise CheckpointError(path, "format", "1, in a plan that carries checksums (damaged or edited)", "2")
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


_GROUP_KEYS = {"name", "units", "kept", "width", "counts", "producers", "consumers"}
#: Optional: layer -> channels of one unit in it, where that is not ``width`` (q, k and v stacked
#: in one layer; query heads sharing a key/value head).
_WIDTHS = "widths"


def layer_width(group: dict[str, Any], name: str) -> int:
    """Channels one unit of a recorded group spans in layer ``name``."""
    return int(group.get(_WIDTHS, {}).get(name, group["width"]))


def _groups(path: Path, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise CheckpointError(path, "declared.groups", "missing or malformed", "a list of declared groups")
    for i, group in enumerate(value):
        where = f"declared.groups[{i}]"
        if not isinstance(group, dict) or set(group) - {_WIDTHS} != _GROUP_KEYS:
            raise CheckpointError(path, where, "malformed", ", ".join(sorted(_GROUP_KEYS)) + " (and widths)")
        widths = group.get(_WIDTHS, {})
        if not isinstance(widths, dict) or not all(
            name in (*group["producers"], *group["consumers"]) and _is_int(w) and w >= 1
            for name, w in widths.items()
        ):
            raise CheckpointError(
                path, f"{where}.widths", "malformed", "a layer of the group -> its channels per unit"
            )
        units, kept, width, counts = group["units"], group["kept"], group["width"], group["counts"]
        if not all(_is_int(v) for v in (units, kept, width)) or not 1 <= kept <= units or width < 1:
            raise CheckpointError(path, where, "sizes out of range", "1 <= kept <= units, width >= 1")
        if not isinstance(counts, dict) or not all(v in ("units", "channels") for v in counts.values()):
            raise CheckpointError(path, f"{where}.counts", "malformed", "attribute -> 'units' or 'channels'")
        for side in ("producers", "consumers"):
            names = group[side]
            if (
                not isinstance(names, list)
                or not all(isinstance(n, str) for n in names)
                or (side == "producers" and not names)
            ):
                raise CheckpointError(path, f"{where}.{side}", "malformed", "a list of layer names")
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


def _out_size(module: nn.Module | None) -> int | None:
    """Output channels of a Linear, convolution or norm, read from its weights."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.modules.batchnorm._NormBase) and weight is None:
        weight = getattr(module, "running_mean", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() == 0:
        return None
    if module is not None and is_transformers_conv1d(module):
        return int(weight.shape[1])  # weight (in, out)
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
        return int(weight.shape[1]) * module.groups
    return int(weight.shape[0])


def _in_size(module: nn.Module | None) -> int | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return None
    if module is not None and is_transformers_conv1d(module):
        return int(weight.shape[0])
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(weight.shape[0]) if module.transposed else int(weight.shape[1]) * module.groups
    return int(weight.shape[1])


def _is_inside(owner: str, name: str) -> bool:
    """``owner`` is a proper ancestor of module ``name`` (the model itself is everyone's)."""
    return owner != name and (owner == "" or name.startswith(owner + "."))


def check_attributes(plan: Plan, modules: dict[str, nn.Module]) -> Before:
    """Before any removal: each size attribute the plan sets is an int attribute, today, of a module
    that contains layers the plan shrinks, named by the group that records it (for plans of the
    first format, which record no groups, one that contains a layer losing outputs). Returns the
    sizes now, for :func:`check_groups_after`."""
    producers = {name for g in plan.groups or [] for name in g["producers"]}
    if plan.groups is None:
        producers = {name for name, side, _ in plan.declared_removals if side is True}
    for group in plan.groups or []:
        for side, size_of in (("producers", _out_size), ("consumers", _in_size)):
            for name in group[side]:
                full = group["units"] * layer_width(group, name)
                size = size_of(modules.get(name))
                if (size is not None and size != full) or (name not in modules):
                    raise CheckpointError(
                        plan.path,
                        f"declared.groups.{group['name']}.{side}",
                        f"{name}: {size} channels",
                        f"{full} (units x width), as the model has them",
                    )
    named: dict[str, tuple[int, int, dict[str, Any]]] = {}
    for group in plan.groups or []:
        for key, kind in group["counts"].items():
            factor = 1 if kind == "units" else group["width"]
            named[key] = (group["units"] * factor, group["kept"] * factor, group)
    for key, (units, kept, group) in named.items():
        if kept < units and key not in plan.attributes:
            raise CheckpointError(
                plan.path,
                f"declared.attributes.{key}",
                "missing",
                f"{kept}, the size group {group['name']!r} records after its removals",
            )
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
        around = (
            producers
            if plan.groups is None
            else set(named.get(key, (0, 0, {"producers": []}))[2]["producers"])
        )
        if not any(_is_inside(owner_name, name) for name in around):
            raise CheckpointError(
                plan.path,
                field,
                "its module contains no layer the plan's declared groups shrink",
                "a size attribute of the module holding the group",
            )
        if plan.groups is not None:
            if key not in named:
                raise CheckpointError(plan.path, field, "not named by any declared group of the plan")
            before, after, _ = named[key]
            if size != after or current != before:
                raise CheckpointError(
                    plan.path, field, f"{current} -> {size}", f"{before} -> {after}, as the group records"
                )
        elif size >= current:
            raise CheckpointError(
                plan.path, field, f"{current} -> {size}", "a removal, which only shrinks sizes"
            )
    return Before(
        outputs={name: _out_size(modules.get(name)) for name in producers},
        attributes={
            key: vars(modules[key.rpartition(".")[0]])[key.rpartition(".")[2]] for key in plan.attributes
        },
    )


def check_groups_after(plan: Plan, modules: dict[str, nn.Module], before: Before) -> None:
    """After the removals: each declared group's layers have the channels its kept count says, and
    each size attribute agrees with the layers it counts (so it matches the weights' shapes)."""
    for group in plan.groups or []:
        for side, size_of in (("producers", _out_size), ("consumers", _in_size)):
            for name in group[side]:
                kept = group["kept"] * layer_width(group, name)
                size = size_of(modules.get(name))
                if size is not None and size != kept:
                    raise CheckpointError(
                        plan.path,
                        f"declared.groups.{group['name']}.{side}",
                        f"{name}: {size} channels after the removals",
                        f"{kept} (kept x width)",
                    )
    if plan.groups is not None:
        return
    for key, size in plan.attributes.items():  # first format: the ratio of a layer the owner holds
        owner_name = key.rpartition(".")[0]
        current = before.attributes[key]
        fits = False
        for name, out_before in before.outputs.items():
            out_after = _out_size(modules.get(name))
            if _is_inside(owner_name, name) and out_before is not None and out_after is not None:
                fits |= out_before * size == out_after * current or (
                    out_before == current and out_after == size
                )
        if not fits:
            raise CheckpointError(
                plan.path,
                f"declared.attributes.{key}",
                f"{current} -> {size} does not count the channels left",
                "the units or channels the removals leave in the layers it holds",
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
                    path,
                    f"{name}.{attribute}",
                    f"{getattr(module, attribute)} after the plan's removals",
                    f"{size}, as the layer's weights have",
                )

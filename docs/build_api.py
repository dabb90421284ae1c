"""Writes docs/api.md from the public API's signatures and docstrings.

python docs/build_api.py          # rewrite docs/api.md
python docs/build_api.py --check  # exit 1 if docs/api.md is out of date (the tests run this)
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pdprune
import pdprune.baselines
import pdprune.export
import pdprune.hf

PAGE = Path(__file__).with_name("api.md")
SECTIONS = [
    (
        "Preparing and driving a pruner",
        ["prepare", "Pruner", "WeightPruner", "UnstructuredPruner", "NMPruner", "ChannelPruner", "register"],
    ),
    (
        "Configuration",
        [
            "PruneConfig",
            "WeightConfig",
            "UnstructuredConfig",
            "NMConfig",
            "ChannelConfig",
            "Schedule",
            "LayerOverride",
        ],
    ),
    ("Patterns", ["Unstructured", "NM", "Channels", "ChannelGroupSpec", "default_filter"]),
    (
        "Methods",
        ["Method", "PDP", "baselines.GMP", "baselines.OneShot", "baselines.SRSTE", "baselines.L1Channel"],
    ),
    ("Reports", ["PruneReport", "LayerReport", "ChannelReport"]),
    (
        "Hugging Face (the `hf` extra)",
        [
            "hf.PruningCallback",
            "hf.DistillationTrainer",
            "hf.distillation_loss",
            "hf.save_pretrained",
            "hf.from_pretrained",
        ],
    ),
    (
        "Exports",
        [
            "export.save_sparse",
            "export.load_sparse",
            "export.save_dense",
            "export.load_dense",
            "export.sparse_size_report",
            "export.save_shrunk",
            "export.load_shrunk",
            "export.save_onnx",
            "export.accelerate_2to4",
            "CheckpointError",
        ],
    ),
]


def _resolve(path: str) -> object:
    owner: object = pdprune
    for part in path.split("."):
        owner = getattr(owner, part)
    return owner


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "(no docstring)")


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"


def _entry(path: str) -> list[str]:
    obj = _resolve(path)
    name = f"pdprune.{path}"
    if inspect.isclass(obj):
        lines = [
            f"### `{name}`",
            "",
            f"```text\nclass {obj.__name__}{_signature(obj)}\n```",
            "",
            _doc(obj),
            "",
        ]
        for attr, member in sorted(vars(obj).items()):
            if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                continue
            if not member.__doc__:
                continue
            head = f"`{attr}`" if isinstance(member, property) else f"`{attr}{_signature(member)}`"
            lines += [f"- {head}: " + " ".join(_doc(member).split()), ""]
        return lines
    return [f"### `{name}`", "", f"```text\n{obj.__name__}{_signature(obj)}\n```", "", _doc(obj), ""]  # type: ignore[attr-defined]


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/build_api.py`; the tests check it is current.",
        "Read [architecture.md](architecture.md) for how the pieces fit.",
        "",
    ]
    for title, names in SECTIONS:
        lines += [f"## {title}", ""]
        for path in names:
            lines += _entry(path)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print("docs/api.md is out of date: run python docs/build_api.py")
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

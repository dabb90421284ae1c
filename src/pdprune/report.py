"""What pruning did, layer by layer: a plain data object with text, JSON and plot renderings."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pdprune.io import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["LayerReport", "PruneReport"]


@dataclass(frozen=True)
class LayerReport:
    """One pruned weight tensor: its size, the budget it was given and the sparsity it reached."""

    name: str
    module_type: str
    shape: tuple[int, ...]
    params: int
    target_sparsity: float
    achieved_sparsity: float
    note: str = ""
    # PDP: t^2 / (2 tau) at the last cut in force, the gradient gain of a weight there (None
    # for other methods or before pruning started).
    gain: float | None = None

    @property
    def nonzero(self) -> int:
        return self.params - round(self.achieved_sparsity * self.params)


@dataclass(frozen=True)
class PruneReport:
    """Per-layer sparsity and totals over the pruned tensors and over the whole model."""

    layers: list[LayerReport]
    target_sparsity: float
    model_params: int
    finalized: bool
    step: int
    extra: dict[str, Any] = field(default_factory=dict)
    pattern: str = "unstructured"
    removed: bool = False  # the masks were removed without hardening: measured on the dense weights
    # Module type -> (layers, parameters) of the weight matrices left whole: embeddings, and layer
    # types the filter does not choose.
    unpruned_types: dict[str, tuple[int, int]] = field(default_factory=dict)

    #: A type left whole gets a line in the text report from this share of the model's parameters.
    NOTABLE_SHARE = 0.1

    @property
    def pruned_params(self) -> int:
        """Elements in the tensors under pruning."""
        return sum(layer.params for layer in self.layers)

    @property
    def removed_params(self) -> int:
        return sum(layer.params - layer.nonzero for layer in self.layers)

    @property
    def achieved_sparsity(self) -> float:
        """Fraction of the pruned tensors' elements that are zero (or masked off)."""
        return self.removed_params / self.pruned_params

    @property
    def model_sparsity(self) -> float:
        """Fraction of all model parameters removed (biases, norms and unpruned layers count)."""
        return self.removed_params / self.model_params

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "target_sparsity": self.target_sparsity,
            "achieved_sparsity": self.achieved_sparsity,
            "pruned_params": self.pruned_params,
            "nonzero_pruned_params": self.pruned_params - self.removed_params,
            "model_params": self.model_params,
            "model_nonzero_params": self.model_params - self.removed_params,
            "model_sparsity": self.model_sparsity,
            "finalized": self.finalized,
            "removed": self.removed,
            "step": self.step,
            "layers": [asdict(layer) | {"shape": list(layer.shape)} for layer in self.layers],
            "unpruned_types": {
                kind: {"layers": count, "params": params}
                for kind, (count, params) in self.unpruned_types.items()
            },
            **({"extra": self.extra} if self.extra else {}),
        }

    def to_text(self) -> str:
        gains = any(layer.gain is not None for layer in self.layers)
        header = ("layer", "type", "shape", "params", "target", "achieved", *(("gain",) if gains else ()))
        rows = [
            (
                layer.name,
                layer.module_type,
                "x".join(map(str, layer.shape)),
                f"{layer.params:,}",
                f"{layer.target_sparsity:.4f}",
                f"{layer.achieved_sparsity:.4f}",
                *((_gain(layer.gain),) if gains else ()),
            )
            for layer in self.layers
        ]
        rows.append(
            (
                "total (pruned layers)",
                "",
                "",
                f"{self.pruned_params:,}",
                f"{self.target_sparsity:.4f}",
                f"{self.achieved_sparsity:.4f}",
                *(("",) if gains else ()),
            )
        )
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )

        rule = "-" * len(line(header))
        body = [line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])]
        if self.pattern != "unstructured":
            body.append(
                f"pattern {self.pattern}: N of every M consecutive weights along each layer's input dimension"
            )
        if gains:
            body.append(
                "gain: how much PDP's soft mask amplified the gradient of a weight at the cut "
                "(t^2 / (2 tau), last step in force)"
            )
        body += [f"{layer.name}: {layer.note}" for layer in self.layers if layer.note]
        for kind, (count, params) in self.unpruned_types.items():
            if params >= self.NOTABLE_SHARE * self.model_params:
                body.append(
                    f"not pruned: {count} {kind} layer(s), {params:,} parameters "
                    f"({params / self.model_params:.1%} of the model); filter_fn, include and exclude "
                    "choose the layers"
                )
        kept = self.model_params - self.removed_params
        body.append(
            f"whole model: {self.model_params:,} parameters, {kept:,} nonzero "
            f"({self.model_sparsity:.2%} removed){self._status()}"
        )
        return "\n".join(body)

    def _status(self) -> str:
        if self.removed:
            return " [masks removed without hardening: the model is dense]"
        return "" if self.finalized else " [masks not yet hardened]"

    def save(self, directory: str | os.PathLike[str], plot: bool | None = None) -> list[Path]:
        """Write report.json, report.txt and (see ``plot``) sparsity.png atomically.

        ``plot=None`` draws the plot when matplotlib is installed; ``plot=True`` requires it.
        Returns the paths written.
        """
        out = Path(directory)
        written = [
            atomic_write_json(out / "report.json", self.to_dict()),
            atomic_write_text(out / "report.txt", self.to_text() + "\n"),
        ]
        if plot or (plot is None and _have_matplotlib()):
            written.append(self.save_plot(out / "sparsity.png"))
        return written

    def save_plot(self, path: str | os.PathLike[str]) -> Path:
        """Bar chart of target and achieved sparsity per layer, written atomically as PNG."""
        if not _have_matplotlib():
            raise ImportError(
                "plotting the report needs matplotlib: pip install 'pdprune[plot]' (or matplotlib)"
            )
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [layer.name for layer in self.layers]
        positions = range(len(names))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2.0), 4.5))
        ax.bar(
            [p - 0.2 for p in positions],
            [layer.target_sparsity for layer in self.layers],
            0.4,
            label="target",
        )
        ax.bar(
            [p + 0.2 for p in positions],
            [layer.achieved_sparsity for layer in self.layers],
            0.4,
            label="achieved",
        )
        ax.set_xticks(list(positions), names, rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 1.15)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel("sparsity")
        ax.set_title(f"per-layer sparsity (overall {self.achieved_sparsity:.2%} of pruned weights)")
        ax.legend(loc="upper left", ncol=2, frameon=False)
        fig.tight_layout()
        try:
            return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        finally:
            plt.close(fig)


def _gain(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True

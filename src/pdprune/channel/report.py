"""What channel pruning removed: per layer channels, parameters and MACs before and after, per
group the channels kept, and the groups left alone with the reason."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pdprune.io import atomic_write_json, atomic_write_text

__all__ = ["ChannelLayerReport", "ChannelReport"]


@dataclass(frozen=True)
class ChannelLayerReport:
    name: str
    module_type: str
    out_channels: tuple[int, int]  # before, after
    in_channels: tuple[int, int]
    params: tuple[int, int]
    macs: tuple[int, int]


@dataclass(frozen=True)
class ChannelReport:
    """Channel pruning of one model. ``sparsity`` counts ``unit`` (channels, params or flops)."""

    unit: str
    target_sparsity: float
    groups: dict[str, tuple[int, int]]  # group -> (channels, kept)
    layers: list[ChannelLayerReport]
    skipped: dict[str, str]
    model_params: tuple[int, int]
    finalized: bool
    shrunk: bool
    step: int
    removed: bool = False  # the masks were removed without hardening: nothing is pruned
    extra: dict[str, Any] = field(default_factory=dict)
    group_units: dict[str, tuple[str, int]] = field(
        default_factory=dict
    )  # group -> (unit, channels per unit), if not channels

    @property
    def pattern(self) -> str:
        return "channel"

    def _total(self, what: str) -> tuple[int, int]:
        return (
            sum(getattr(layer, what)[0] for layer in self.layers),
            sum(getattr(layer, what)[1] for layer in self.layers),
        )

    @property
    def params(self) -> tuple[int, int]:
        """Linear/conv parameters before and after."""
        return self._total("params")

    @property
    def macs(self) -> tuple[int, int]:
        """Multiply-accumulates of one forward of the example inputs, before and after."""
        return self._total("macs")

    @property
    def channel_sparsity(self) -> float:
        width = {name: self.group_units.get(name, ("channels", 1))[1] for name in self.groups}
        total = sum(c * width[n] for n, (c, _) in self.groups.items())
        return 1.0 - sum(k * width[n] for n, (_, k) in self.groups.items()) / total

    @property
    def achieved_sparsity(self) -> float:
        """Fraction of the unit removed (channels of the pruned groups, or Linear/conv params or MACs)."""
        if self.unit == "channels":
            return self.channel_sparsity
        before, after = self.params if self.unit == "params" else self.macs
        return 1.0 - after / before

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern": "channel",
            "unit": self.unit,
            "target_sparsity": self.target_sparsity,
            "achieved_sparsity": self.achieved_sparsity,
            "channel_sparsity": self.channel_sparsity,
            "params": list(self.params),
            "macs": list(self.macs),
            "model_params": list(self.model_params),
            "finalized": self.finalized,
            "shrunk": self.shrunk,
            "removed": self.removed,
            "step": self.step,
            "groups": {
                k: {"channels": c, "kept": kept, **self._unit_entry(k)}
                for k, (c, kept) in self.groups.items()
            },
            "skipped_groups": dict(self.skipped),
            "layers": [asdict(layer) for layer in self.layers],
            **({"extra": self.extra} if self.extra else {}),
        }

    def to_text(self) -> str:
        header = ("layer", "type", "out", "in", "params", "MACs")
        rows = [
            (
                layer.name,
                layer.module_type,
                _change(layer.out_channels),
                _change(layer.in_channels),
                _change(layer.params),
                _change(layer.macs),
            )
            for layer in self.layers
        ]
        rows.append(("total (Linear/conv)", "", "", "", _change(self.params), _change(self.macs)))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )

        rule = "-" * len(line(header))
        body = [line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])]
        p0, p1 = self.params
        m0, m1 = self.macs
        state = (
            "masks removed without hardening: nothing pruned"
            if self.removed
            else "removed"
            if self.shrunk
            else ("zeroed, not yet removed" if self.finalized else "masks not yet hardened")
        )
        width = {name: self.group_units.get(name, ("channels", 1))[1] for name in self.groups}
        body.append(
            f"channels: {self.channel_sparsity:.1%} of "
            f"{sum(c * width[n] for n, (c, _) in self.groups.items()):,} in "
            f"{len(self.groups)} groups pruned ({state}); params -{1 - p1 / p0:.1%}, MACs "
            f"-{1 - m1 / m0:.1%}; "
            f"target {self.target_sparsity:.0%} of {self.unit}"
        )
        units: dict[str, list[tuple[int, int]]] = {}
        for name, (unit, _) in self.group_units.items():
            units.setdefault(unit, []).append(self.groups[name])
        for unit, counts in units.items():
            body.append(
                f"{unit}: {sum(k for _, k in counts)} of {sum(c for c, _ in counts)} kept in {len(counts)} "
                "groups "
                f"(each {unit[:-1] if unit.endswith('s') else unit} is removed whole)"
            )
        body += [f"left alone: {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(body)

    def _unit_entry(self, group: str) -> dict[str, Any]:
        if group not in self.group_units:
            return {}
        unit, width = self.group_units[group]
        return {"unit": unit, "channels_per_unit": width}

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write report.json and report.txt atomically into ``directory``."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        return [
            atomic_write_json(folder / "report.json", self.to_dict()),
            atomic_write_text(folder / "report.txt", self.to_text() + "\n"),
        ]


def _change(pair: tuple[int, int]) -> str:
    before, after = pair
    return f"{before:,}" if before == after else f"{before:,} -> {after:,}"

"""Dense reference runs kept on disk, so that invocations measuring different cells of one grid
train each seed's dense model (and distillation teacher) once instead of once per invocation.

An entry is keyed by everything the dense run depends on: the task's settings, the seed, the
torch and transformers versions, the CPU model and the thread count. A dense run involves no
pruning code, so the commit is not part of the key. Entries are safetensors files (the teacher's
logits) with the outcome as JSON metadata; rows read from one say so (``from_cache``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from benchmarks.harness.tasks import RunOutcome
from pdprune.io import atomic_write
from pdprune.machine import machine_info

__all__ = ["DenseCache"]


class DenseCache:
    """A folder of dense runs: ``get`` what an equal run left there, ``put`` a new one."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def key(self, settings: dict[str, Any], seed: int) -> dict[str, Any]:
        import transformers

        machine = machine_info()
        return {
            "settings": settings,
            "seed": seed,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cpu": machine["cpu"],
            "torch_threads": machine["torch_threads"],
        }

    def _path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.folder / f"dense-{digest}.safetensors"

    def get(self, settings: dict[str, Any], seed: int) -> tuple[RunOutcome, torch.Tensor | None] | None:
        """The stored run with these settings and seed, or None if there is none."""
        key = self.key(settings, seed)
        path = self._path(key)
        if not path.exists():
            return None
        with safe_open(str(path), framework="pt") as stored:
            meta = stored.metadata() or {}
            if json.loads(meta.get("key", "null")) != key:
                return None
            logits = stored.get_tensor("logits") if "logits" in stored.keys() else None  # noqa: SIM118
        outcome = RunOutcome(**json.loads(meta["outcome"]))
        return RunOutcome(**{**asdict(outcome), "from_cache": True}), logits

    def put(
        self, settings: dict[str, Any], seed: int, outcome: RunOutcome, logits: torch.Tensor | None
    ) -> Path:
        key = self.key(settings, seed)
        path = self._path(key)
        tensors = {"logits": logits.contiguous()} if logits is not None else {}
        meta = {"key": json.dumps(key, sort_keys=True), "outcome": json.dumps(asdict(outcome))}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

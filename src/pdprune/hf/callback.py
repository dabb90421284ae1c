"""Pruning inside a Hugging Face ``Trainer``.

The schedule follows the Trainer's own step count, the pruner steps once per optimizer step
(after gradient accumulation), its state travels in every checkpoint and comes back on resume,
and the masks harden when training ends, so ``trainer.save_model()`` writes the zeros.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from pdprune.api import prepare
from pdprune.config import PruneConfig
from pdprune.engine.base import Pruner
from pdprune.engine.weights import WeightPruner
from pdprune.io import atomic_write_json

__all__ = ["STATE_FILE", "PruningCallback"]

#: The pruner's state in every checkpoint-N folder, as JSON.
STATE_FILE = "pdprune_pruner.json"

logger = logging.getLogger(__name__)


class PruningCallback(TrainerCallback):
    """Prunes the Trainer's model while it trains.

    Args:
        config: what to prune and how hard. Its schedule's ``total_steps`` is replaced by the
            Trainer's ``max_steps``; ``warmup`` and ``ramp`` given as fractions follow it.
        example_inputs: one batch as the model takes it, for channel pruning only.
        log_layers: also log each pruned layer's sparsity in force, threshold and gain.

    Add it with ``PruningCallback(config).attach(trainer)``, which makes it the first callback.
    ``Trainer(callbacks=[callback])`` prunes just the same, but the Trainer then runs its
    ``report_to`` loggers before it, and they miss pdprune's metrics. After ``train()``,
    :attr:`pruner` holds the pruner and :attr:`report` its report.
    """

    def __init__(self, config: PruneConfig, *, example_inputs: Any = None, log_layers: bool = False) -> None:
        if not isinstance(config, PruneConfig):
            raise TypeError(f"PruningCallback takes a pdprune.PruneConfig, got {type(config).__name__}")
        self.config = config
        self.example_inputs = example_inputs
        self.log_layers = log_layers
        self.pruner: Pruner[Any, Any] | None = None
        self.report: Any = None

    def attach(self, trainer: Any) -> PruningCallback:
        """Make this the Trainer's first callback, so its metrics reach every ``report_to`` logger."""
        callbacks = trainer.callback_handler.callbacks
        callbacks[:] = [c for c in callbacks if c is not self]
        callbacks.insert(0, self)
        return self

    # ----------------------------------------------------------------- Trainer events
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if args.load_best_model_at_end:
            raise ValueError(
                "load_best_model_at_end=True reloads a checkpoint saved while pruning was under way (its "
                "weights are still dense), and the masks would then harden on that model instead of the one "
                "trained to the end. Set load_best_model_at_end=False and evaluate the pruned model after "
                "train() returns."
            )
        if self.pruner is not None:
            if self.pruner.finalized:
                raise RuntimeError(
                    "this PruningCallback has already pruned its model (the masks are hardened); a new "
                    "training run needs a new PruningCallback"
                )
            self.pruner.remove()  # a second train(): the schedule starts again for its step count
        self.pruner = prepare(kwargs["model"], self._config_for(state.max_steps), self.example_inputs)
        if state.global_step > 0:
            self._resume(args, state)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.pruner is not None and not self.pruner.finalized:
            self.pruner.step()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.pruner is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            atomic_write_json(folder / STATE_FILE, self.pruner.state_dict())

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.pruner is None or self.pruner.finalized or logs is None or "loss" not in logs:
            return
        metrics = self.metrics()
        logs.update(metrics)
        # The Trainer keeps a copy of the logs, made before callbacks run, in trainer_state.json.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.pruner is None or self.pruner.finalized:
            return
        self.report = self.pruner.finalize()
        if state.is_world_process_zero:
            logger.info("pdprune: masks hardened\n%s", self.report.to_text())

    # ----------------------------------------------------------------- helpers
    def metrics(self) -> dict[str, float]:
        """What the pruner does now: the ramp's progress, the sparsity in force over the pruned
        tensors, and PDP's largest gradient gain at the cut (per layer with ``log_layers``)."""
        pruner = self.pruner
        assert pruner is not None
        targets = list(pruner.targets.values())
        out = {"pdprune/ramp_progress": max(float(t.progress) for t in targets)}
        if not isinstance(pruner, WeightPruner):
            return out
        in_force = pruner.current_sparsity()
        sizes = {t.name: t.parameter.numel() for t in targets}
        out["pdprune/sparsity"] = sum(in_force[n] * sizes[n] for n in sizes) / sum(sizes.values())
        method = pruner.config.method
        gains = {t.name: method.gain_at_cut(t, pruner.state[t.name]) for t in targets}
        known = [g for g in gains.values() if g is not None]
        if known:
            out["pdprune/max_gain"] = max(known)
        if self.log_layers:
            for target in targets:
                name = target.name
                out[f"pdprune/sparsity/{name}"] = in_force[name]
                if gains[name] is not None:
                    out[f"pdprune/gain/{name}"] = gains[name]  # type: ignore[assignment]
                cached = getattr(pruner.state[name], "cached", None)
                if cached is not None:
                    out[f"pdprune/threshold/{name}"] = float(cached[1].detach().float().pow(2).mean().sqrt())
        return out

    def _config_for(self, max_steps: int) -> PruneConfig:
        schedule = self.config.schedule
        try:
            return replace(self.config, schedule=replace(schedule, total_steps=max_steps))
        except ValueError as error:
            raise ValueError(
                f"the Trainer runs {max_steps} optimizer steps and the pruning schedule does not fit them: "
                f"{error} Give warmup and ramp as fractions of the run (e.g. warmup=0.1, ramp=0.5)."
            ) from None

    def _resume(self, args: TrainingArguments, state: TrainerState) -> None:
        assert self.pruner is not None
        folder = _checkpoint_folder(args, state)
        path = folder / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"resuming at step {state.global_step}, but {path} does not exist, so the pruner's state "
                f"is unknown. Resume from a checkpoint saved with a PruningCallback, with "
                f"TrainingArguments(output_dir=...) the folder that holds it (or resume_from_checkpoint= "
                f"its path), or start again from step 0."
            )
        saved = json.loads(path.read_text())
        self.pruner.load_state_dict(saved)
        if self.pruner.step_count != state.global_step:
            raise ValueError(
                f"{path} holds the pruner at step {self.pruner.step_count}, but the Trainer resumes at step "
                f"{state.global_step}: the file belongs to another checkpoint"
            )


def _checkpoint_folder(args: TrainingArguments, state: TrainerState) -> Path:
    """The checkpoint the Trainer resumed from: ``args.resume_from_checkpoint`` when it names a
    folder, else ``output_dir/checkpoint-<step>`` (the Trainer does not tell callbacks)."""
    named = getattr(args, "resume_from_checkpoint", None)
    if isinstance(named, str) and (Path(named) / STATE_FILE).is_file():
        return Path(named)
    return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"

"""Trace single runs of the accuracy harness's image tasks, to find where and why one collapses.

For each seed and method it records the test accuracy every few optimizer steps with the masks
in force (with BatchNorm's running statistics, as evaluated, and with the test batch's own
statistics, which tells stale running statistics from a network that has lost its signal), then
what each layer keeps after ``finalize()`` and which classes the pruned model predicts. Runs are
exactly those of ``python -m benchmarks.accuracy`` with the same settings.

    python -m benchmarks.trace_run --dataset digits --pretrain-epochs 30 --epochs 8 --lr 1e-3 \\
        --ramp-shape cubic --budget uniform --sparsity 0.98 --methods pdp gmp --seeds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.harness.methods import METHODS, PruningSetup
from benchmarks.harness.provenance import RESULTS, provenance
from benchmarks.harness.tasks import IMAGE_MODELS, ImageTask
from benchmarks.harness.training import evaluate
from pdprune import PDP, argtypes
from pdprune.io import atomic_write_json, atomic_write_text
from pdprune.machine import machine_info

OUT = RESULTS / "trace"


class AccuracyProbe:
    """Passes ``step()`` on to the pruner and measures test accuracy every ``every`` steps."""

    def __init__(self, pruner: Any, model: nn.Module, task: ImageTask, every: int) -> None:
        self.pruner, self.model, self.task, self.every = pruner, model, task, every
        self.steps = 0
        self.trace: list[dict[str, float]] = []

    def step(self) -> None:
        self.pruner.step()
        self.steps += 1
        if self.steps % self.every == 0:
            self.trace.append({"step": self.steps, **accuracies(self.model, self.task)})


def accuracies(model: nn.Module, task: ImageTask) -> dict[str, float]:
    """Test accuracy in % with running BatchNorm statistics and with the test batch's own (on a
    copy, so the run's running statistics are untouched)."""
    x, y = task.data.x_test, task.data.y_test
    twin = copy.deepcopy(model).train()
    with torch.no_grad():
        batch_stats = float((twin(x).argmax(1) == y).float().mean())
    return {"accuracy": 100 * evaluate(model, x, y), "batch_stats_accuracy": 100 * batch_stats}


def layer_survival(model: nn.Module) -> list[dict[str, Any]]:
    """Per Linear/conv layer: weights kept, and how many outputs and inputs still have one."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            alive = module.weight.detach() != 0
            layers.append(
                {
                    "layer": name,
                    "kept": int(alive.sum()),
                    "weights": alive.numel(),
                    "outputs_alive": int(alive.flatten(1).any(1).sum()),
                    "outputs": alive.shape[0],
                    "inputs_alive": int(alive.transpose(0, 1).flatten(1).any(1).sum()),
                    "inputs": alive.shape[1],
                }
            )
    return layers


def trace(task: ImageTask, setup: PruningSetup, method: str, sparsity: float, seed: int, every: int) -> dict:
    spec = METHODS[method]
    probes: list[AccuracyProbe] = []

    def wrap(pruner: Any, model: nn.Module) -> AccuracyProbe:
        probes.append(AccuracyProbe(pruner, model, task, every))
        return probes[0]

    model, pruner = task.fine_tune(seed, lambda total: spec.config(sparsity, total, setup), wrap=wrap)
    before = accuracies(model, task)
    pruner.finalize()
    with torch.no_grad():
        predicted = model.eval()(task.data.x_test).argmax(1)
    schedule = pruner.config.schedule
    ramp_end = schedule.warmup_steps + schedule.ramp_steps
    # Only PDP's soft masks settle; the baselines' masks are hard throughout.
    settle = getattr(pruner.config, "settle", None) if isinstance(pruner.config.method, PDP) else None
    settled = None if settle is None else ramp_end + round(settle * (schedule.total_steps - ramp_end))
    return {
        "seed": seed,
        "method": method,
        "pretrained_accuracy": task.describe().get("pretrained_accuracy", {}).get(str(seed)),
        "phases": {
            "warmup_end": schedule.warmup_steps,
            "ramp_end": ramp_end,
            "settled": settled,
            "total": schedule.total_steps,
        },
        "trace": probes[0].trace,
        "before_finalize": before,
        "final_accuracy": 100 * evaluate(model, task.data.x_test, task.data.y_test),
        "layers": layer_survival(model),
        "predicted_classes": torch.bincount(predicted, minlength=task.data.num_classes).tolist(),
    }


def markdown(result: dict) -> str:
    lines = [
        f"# Traced runs ({result['setup_text']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Commit: {result['commit']}  ",
        f"Machine: {result['machine']['cpu']} ({result['machine']['torch_threads']} torch threads), "
        f"torch {result['machine']['torch']}, Python {result['machine']['python']}",
        "",
        "Test accuracy in % with the masks in force: with BatchNorm's running statistics (as "
        "evaluated) / with the test batch's own statistics.",
    ]
    for run in result["runs"]:
        phases, before = run["phases"], run["before_finalize"]
        lines += [
            "",
            f"## seed {run['seed']}, {run['method']}: {run['final_accuracy']:.2f} after finalize()",
            "",
            f"Pretrained {run['pretrained_accuracy']}; warm-up ends at step {phases['warmup_end']}, "
            f"the ramp at {phases['ramp_end']}"
            + (f", PDP's masks hard from {phases['settled']}" if phases["settled"] is not None else "")
            + f", {phases['total']} steps. Before finalize(): "
            f"{before['accuracy']:.2f} / {before['batch_stats_accuracy']:.2f}.",
            "",
            "| step | " + " | ".join(str(p["step"]) for p in run["trace"]) + " |",
            "|---|" + "---|" * len(run["trace"]),
            "| accuracy | " + " | ".join(f"{p['accuracy']:.0f}" for p in run["trace"]) + " |",
            "| batch statistics | "
            + " | ".join(f"{p['batch_stats_accuracy']:.0f}" for p in run["trace"])
            + " |",
            "",
            "| layer | kept | outputs with a weight | inputs with a weight |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {layer['layer']} | {layer['kept']} / {layer['weights']} | "
            f"{layer['outputs_alive']} / {layer['outputs']} | {layer['inputs_alive']} / {layer['inputs']} |"
            for layer in run["layers"]
        ]
        lines += ["", f"Predicted classes on the test set (count per class): {run['predicted_classes']}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.trace_run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dataset", choices=["fashion-mnist", "digits"], default="digits")
    parser.add_argument("--model", choices=sorted(IMAGE_MODELS), default="smallcnn")
    parser.add_argument("--train-limit", type=argtypes.positive_int, default=None)
    parser.add_argument("--pretrain-epochs", type=int, default=0, help="0: prune from scratch")
    parser.add_argument("--epochs", type=argtypes.positive_int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["pdp", "gmp"])
    parser.add_argument("--sparsity", type=argtypes.sparsity, default=0.9)
    parser.add_argument("--budget", choices=["global", "erk", "uniform"], default="global")
    parser.add_argument("--ramp-shape", choices=["linear", "cubic"], default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--every", type=argtypes.positive_int, default=10, help="steps between measurements")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    task = ImageTask(
        dataset=args.dataset,
        model=args.model,
        epochs=args.epochs,
        train_limit=args.train_limit,
        lr=args.lr,
        pretrain_epochs=args.pretrain_epochs,
    )
    setup = PruningSetup(budget=args.budget, ramp_shape=args.ramp_shape)
    runs = [
        trace(task, setup, method, args.sparsity, seed, args.every)
        for seed in args.seeds
        for method in args.methods
    ]
    result = {
        "benchmark": "trace_run",
        **provenance("benchmarks.trace_run", argv),
        "machine": machine_info(),
        "setup": {"task": task.describe(), "pruning": asdict(setup), "sparsity": args.sparsity},
        "setup_text": f"{task.name}, {args.sparsity:.0%} {args.budget}, {setup.temperature_text()}",
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"trace_{args.tag}"
    atomic_write_json(stem.with_name(stem.name + ".json"), json.loads(json.dumps(result, default=str)))
    atomic_write_text(stem.with_name(stem.name + ".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

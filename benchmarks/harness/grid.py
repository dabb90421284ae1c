"""Accuracy at equal budget: dense and every method, at every sparsity, for several seeds.

Each run writes its row at once (atomically), so a long benchmark can be inspected while it runs
and a crash loses at most one run. Outputs, named ``accuracy_<tag>``: .json (machine, versions,
settings, every run and mean/std per cell), .md (tables and target checks) and .png (accuracy vs
sparsity per task).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.harness.methods import METHODS, PruningSetup, nm_sparsity
from benchmarks.harness.provenance import git_commit
from benchmarks.harness.tasks import Task
from pdprune import Channels
from pdprune.io import atomic_write, atomic_write_json, atomic_write_text
from pdprune.machine import machine_info

__all__ = ["AccuracyGrid", "PlanSettings", "build_plan", "merge_results", "run_accuracy", "summarise"]


@dataclass(frozen=True)
class PlanEntry:
    """One task and where it is measured: unstructured sparsities under each budget rule, and
    N:M patterns (budgets do not apply to N:M: every layer keeps N of M)."""

    task: Task
    sparsities: tuple[float, ...]
    budgets: tuple[str, ...]
    patterns: tuple[str, ...] = ()
    channel_flops: tuple[float, ...] = ()  # fractions of FLOPs removed by channel pruning
    channel_scopes: tuple[str, ...] = ("all",)  # Channels(scope=...): "all" groups, or "expansion" ones

    def channel_budgets(self) -> list[tuple[str, str]]:
        """(budget label, pattern) of each channel scope measured."""
        if not self.channel_flops:
            return []
        return [
            (
                "channel/flops" if scope == "all" else f"channel/flops/{scope}",
                "channel" if scope == "all" else f"channel/{scope}",
            )
            for scope in self.channel_scopes
        ]


Plan = Sequence[PlanEntry]


@dataclass(frozen=True)
class PlanSettings:
    """Training budgets of the standard tasks (quick mode replaces them with tiny ones)."""

    epochs: int = 3
    train_limit: int | None = None
    image_sparsities: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98, 0.99)
    text_sparsities: tuple[float, ...] = (0.9,)
    text_channel_flops: tuple[
        float, ...
    ] = ()  # heads and FFN rows pruned to these fractions of FLOPs removed
    image_budgets: tuple[str, ...] = ("global",)
    image_patterns: tuple[str, ...] = ()  # N:M patterns such as "2:4", for the image tasks
    image_channel_flops: tuple[float, ...] = ()  # channel pruning to these fractions of FLOPs removed
    image_channel_scopes: tuple[str, ...] = ("all",)
    text_budgets: tuple[str, ...] = ("uniform",)
    text_steps: int = 250
    text_lr: float = 1e-4
    distill: tuple[bool, ...] = (False,)  # MiniLM without and/or with distillation
    image_dataset: str = "fashion-mnist"  # or "digits"
    image_lr: float = 2e-3
    pretrain_epochs: int = 0  # > 0: fine-tune a dense model trained this many epochs first
    pretrain_lr: float = 2e-3
    dense_cache: Path | None = None  # folder keeping MiniLM's dense runs between invocations


def build_plan(task_names: Sequence[str], settings: PlanSettings, quick: bool = False) -> list[PlanEntry]:
    """The standard tasks by short name: "resnet", "mobilenetv2" and "smallcnn" on the image
    dataset (Fashion-MNIST by default), "minilm" on Rotten Tomatoes. ``quick`` shrinks data and
    steps to a smoke test of the whole pipeline."""
    from benchmarks.harness.dense_cache import DenseCache
    from benchmarks.harness.tasks import IMAGE_MODELS, ImageTask
    from benchmarks.harness.text_task import MiniLMTask

    plan: list[PlanEntry] = []
    for name in task_names:
        if name in IMAGE_MODELS:
            task: Task = ImageTask(
                settings.image_dataset,
                name,
                epochs=1 if quick else settings.epochs,
                train_limit=512 if quick else settings.train_limit,
                test_limit=1000 if quick else None,
                lr=settings.image_lr,
                pretrain_epochs=min(settings.pretrain_epochs, 1) if quick else settings.pretrain_epochs,
                pretrain_lr=settings.pretrain_lr,
            )
            plan.append(
                PlanEntry(
                    task,
                    (0.9,) if quick else settings.image_sparsities,
                    settings.image_budgets,
                    settings.image_patterns,
                    settings.image_channel_flops,
                    settings.image_channel_scopes,
                )
            )
        elif name == "minilm":
            dense_runs: dict = {}  # the variants share each seed's dense model (and teacher)
            cache = DenseCache(settings.dense_cache) if settings.dense_cache else None
            for distill in settings.distill:
                task = MiniLMTask(
                    steps=6 if quick else settings.text_steps,
                    batch_size=8 if quick else 32,
                    lr=settings.text_lr,
                    distill=distill,
                    train_limit=128 if quick else None,
                    test_limit=128 if quick else None,
                    dense_runs=dense_runs,
                    keep_teacher=any(settings.distill),
                    dense_cache=cache,
                )
                plan.append(
                    PlanEntry(
                        task,
                        (0.9,) if quick and settings.text_sparsities else settings.text_sparsities,
                        settings.text_budgets,
                        channel_flops=settings.text_channel_flops,
                    )
                )
        else:
            raise ValueError(f"unknown task {name!r}; choose from {', '.join([*IMAGE_MODELS, 'minilm'])}")
    return plan


@dataclass(frozen=True)
class AccuracyGrid:
    """What every task shares: the methods compared, the seeds and the pruning setup."""

    methods: tuple[str, ...] = ("pdp", "gmp", "oneshot")
    nm_methods: tuple[str, ...] = ("pdp", "oneshot", "srste")  # for N:M patterns
    channel_methods: tuple[str, ...] = ("pdp", "l1channel")  # for channel pruning
    seeds: tuple[int, ...] = (0, 1, 2)
    setup: PruningSetup = field(default_factory=PruningSetup)
    dense: bool = True  # False: skip the dense runs (ablations that reuse an earlier dense reference)

    def __post_init__(self) -> None:
        unknown = [m for m in (*self.methods, *self.nm_methods, *self.channel_methods) if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        for name in self.methods:
            if not METHODS[name].unstructured:
                raise ValueError(f"{name} is an N:M method: list it under the N:M methods")
        for name in self.nm_methods:
            if not METHODS[name].nm:
                raise ValueError(f"{name} has no N:M form: list it under the unstructured methods")
        for name in self.channel_methods:
            if not METHODS[name].channel:
                raise ValueError(f"{name} has no channel form")
        if len(self.seeds) < 1:
            raise ValueError("give at least one seed (three or more for a mean and spread worth quoting)")


def _stats(values: list[float]) -> dict[str, float | int]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "worst": min(values),
        "n": len(values),
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of accuracy (in %) per (task, budget, method, sparsity)."""
    groups: dict[tuple[str, str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["budget"], row["method"], row["sparsity"])].append(row)
    cells = []
    for (task, budget, method, sparsity), members in groups.items():
        cells.append(
            {
                "task": task,
                "budget": budget,
                "method": method,
                "sparsity": sparsity,
                "accuracy": _stats([100 * r["accuracy"] for r in members]),
                "achieved_sparsity": statistics.mean(r["achieved_sparsity"] for r in members),
                "seconds": statistics.mean(r["seconds"] for r in members),
            }
        )
    return cells


def _targets(cells: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked on the measured cells (stated, never assumed)."""
    by = {(c["task"], c["budget"], c["method"], c["sparsity"]): c["accuracy"] for c in cells}
    lines = []
    for (task, budget, method, sparsity), pdp in sorted(by.items()):
        if method == "pdp" and budget.startswith("channel"):
            if (task, budget, "l1channel", sparsity) in by:
                other = by[(task, budget, "l1channel", sparsity)]
                gap = pdp["mean"] - other["mean"]
                scope = " (expansion groups only)" if budget.endswith("/expansion") else ""
                lines.append(
                    f"- {task}, channels{scope} at {sparsity:.0%} of FLOPs removed: "
                    f"PDP - L1-norm = {gap:+.2f} points (L1 sd {other['std']:.2f}); "
                    f"target PDP >= L1: {'met' if gap >= 0 else 'not met'}"
                )
            continue
        if method == "pdp" and ":" in budget:  # N:M: compare with the N:M baselines
            gaps = [
                f"PDP - {other} = {pdp['mean'] - by[(task, budget, other, sparsity)]['mean']:+.2f} points "
                f"({other} sd {by[(task, budget, other, sparsity)]['std']:.2f})"
                for other in ("srste", "oneshot")
                if (task, budget, other, sparsity) in by
            ]
            if gaps:
                lines.append(f"- {task}, {budget}: " + "; ".join(gaps))
            continue
        if method != "pdp" or (task, budget, "gmp", sparsity) not in by:
            continue
        gmp = by[(task, budget, "gmp", sparsity)]
        gap = pdp["mean"] - gmp["mean"]
        verdicts = [f"PDP - GMP = {gap:+.2f} points (GMP sd {gmp['std']:.2f})"]
        verdicts.append("within 1 sd or better" if gap >= -gmp["std"] else "BELOW GMP by more than 1 sd")
        if "worst" in pdp:
            # Never collapse where the baseline does not: the worst seed within 2 points of GMP's
            # mean, the mean within 0.5.
            held = pdp["worst"] >= gmp["mean"] - 2.0 and gap >= -0.5
            verdicts.append(
                f"PDP worst seed {pdp['worst']:.2f}; no-collapse target "
                f"(worst >= GMP mean - 2, mean >= GMP mean - 0.5): {'met' if held else 'NOT MET'}"
            )
        if task.startswith("fashion-mnist") and sparsity >= 0.98:
            verdicts.append("target +1: " + ("met" if gap >= 1 else "not met"))
        if task.startswith("rotten-tomatoes") and abs(sparsity - 0.9) < 1e-9:
            verdicts.append("target +2: " + ("met" if gap >= 2 else "not met"))
        lines.append(f"- {task}, {budget} budgets, at {sparsity:.0%}: " + "; ".join(verdicts))
    return lines


def _markdown(result: dict[str, Any]) -> str:
    cells = result["cells"]
    methods = result["grid"]["methods"]
    seeds = len(result["grid"]["seeds"])
    lines = [
        f"# Accuracy at equal budget ({result['mode']})",
        "",
        f"Command: `{result['command']}`  ",
        *([f"Merged by: `{result['merge_command']}`  "] if result.get("merge_command") else []),
        f"Commit: {result.get('commit', 'unknown')}"
        + (f" (runs at: {', '.join(result['run_commits'])})" if result.get("run_commits") else "")
        + "  ",
        (
            f"Machine: {result['machine']['cpu']} ({result['machine']['torch_threads']} torch threads), "
            f"torch {result['machine']['torch']}, Python {result['machine']['python']}  "
        ),
        f"Seeds: {', '.join(map(str, result['grid']['seeds']))}. Pruning: {result['setup_text']}",
        "",
        "Test accuracy in %, mean ± sample sd over seeds (and the worst seed)."
        + (
            ""
            if result["grid"].get("dense", True)
            else " Dense models were not trained in this run (`--no-dense`)."
        ),
    ]
    for task in result["tasks"]:
        name = task["task"]
        details = ", ".join(f"{k}: {v}" for k, v in task.items() if k not in ("task", "sparsities"))
        lines += ["", f"## {name}", "", details, ""]
        dense = next((c for c in cells if c["task"] == name and c["method"] == "dense"), None)
        header = ["sparsity", "budgets or N:M", "dense", *methods]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        keys = sorted(
            {(c["budget"], c["sparsity"]) for c in cells if c["task"] == name and c["method"] != "dense"},
            key=lambda k: (k[1], k[0]),
        )
        for budget, sparsity in keys:
            row = [f"{sparsity:.0%}", budget, _fmt(dense, seeds)]
            for method in methods:
                key = (name, budget, method, sparsity)
                row.append(
                    _fmt(
                        next(
                            (c for c in cells if (c["task"], c["budget"], c["method"], c["sparsity"]) == key),
                            None,
                        ),
                        seeds,
                    )
                )
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Targets", "", *(_targets(cells) or ["- (no PDP/GMP pairs in this run)"])]
    if result.get("notes"):
        lines += ["", "## Notes", "", *(f"- {note}" for note in result["notes"])]
    return "\n".join(lines) + "\n"


def _fmt(cell: dict[str, Any] | None, seeds: int | None = None) -> str:
    if cell is None:
        return "-"
    acc = cell["accuracy"]
    text = f"{acc['mean']:.2f} ± {acc['std']:.2f}"
    if "worst" in acc and acc["n"] > 1:
        text += f" (worst {acc['worst']:.2f})"
    return text if seeds is None or acc["n"] == seeds else f"{text} (n={acc['n']})"


def _plot(result: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks = [t["task"] for t in result["tasks"]]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        cells = [c for c in result["cells"] if c["task"] == task]
        cells = [
            c for c in cells if ":" not in c["budget"] and not c["budget"].startswith("channel")
        ]  # tables only
        sparsities = sorted({c["sparsity"] for c in cells if c["method"] != "dense"})
        budgets = sorted({c["budget"] for c in cells if c["method"] != "dense"})
        positions = list(range(len(sparsities)))
        styles = ["-", "--", ":"]
        for method_index, method in enumerate(result["grid"]["methods"]):
            for budget_index, budget in enumerate(budgets):
                points = [
                    next(
                        (
                            c
                            for c in cells
                            if (c["method"], c["budget"], c["sparsity"]) == (method, budget, s)
                        ),
                        None,
                    )
                    for s in sparsities
                ]
                xs = [p for p, c in zip(positions, points) if c]
                if not xs:
                    continue
                ax.errorbar(
                    xs,
                    [c["accuracy"]["mean"] for c in points if c],
                    [c["accuracy"]["std"] for c in points if c],
                    marker="o",
                    capsize=3,
                    color=f"C{method_index}",
                    linestyle=styles[budget_index % len(styles)],
                    label=method if len(budgets) == 1 else f"{method} ({budget})",
                )
        dense = next((c for c in cells if c["method"] == "dense"), None)
        if dense:
            ax.axhline(dense["accuracy"]["mean"], color="gray", linestyle="--", label="dense")
        ax.set_xticks(positions, [f"{s:.0%}" for s in sparsities])
        ax.set_xlabel("sparsity")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(task)
        if ax.get_legend_handles_labels()[0]:  # a channel-only run without dense plots nothing here
            ax.legend()
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def run_accuracy(
    plan: Plan,
    grid: AccuracyGrid,
    out_dir: str | Path,
    tag: str,
    command: str,
    mode: str,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Train every (task, seed, method, sparsity) plus dense per (task, seed); write the results,
    with ``command`` (as typed) and the repository's commit."""
    out = Path(out_dir)
    setup = grid.setup
    channel_ramp = (
        "" if setup.channel_ramp is None else f"channel pruning ramps over {setup.channel_ramp:.0%}; "
    )
    result: dict[str, Any] = {
        "benchmark": "accuracy",
        "mode": mode,
        "command": command,
        "commit": git_commit(),
        "machine": machine_info(),
        "grid": {
            "methods": list(
                dict.fromkeys(
                    [
                        *grid.methods,
                        *(grid.nm_methods if any(e.patterns for e in plan) else ()),
                        *(grid.channel_methods if any(e.channel_flops for e in plan) else ()),
                    ]
                )
            ),
            "seeds": list(grid.seeds),
            "dense": grid.dense,
        },
        "setup": asdict(setup),
        "setup_text": (
            f"warm-up {setup.warmup:.0%} of steps, ramp {setup.ramp:.0%} ("
            + (f"{setup.ramp_shape} for every method" if setup.ramp_shape else "PDP linear, GMP cubic")
            + " with "
            f"{setup.gmp_refreshes} mask refreshes, one-shot at the end of warm-up; "
            f"{channel_ramp}for N:M PDP ramps each group's threshold from 0, SR-STE and one-shot apply N:M "
            "from the end of warm-up), per-layer budgets (named in each row) fixed when pruning starts, "
            f"PDP {setup.temperature_text()} (channels: {setup.channel_tau:g} of t^2, masks hardened "
            "over the first "
            f"{setup.channel_settle:.0%} of the steps after the ramp); same optimizer, LR schedule, epochs, "
            "budgets and seeds for every method"
        ),
        "tasks": [],
        "rows": [],
        "cells": [],
    }
    stem = out / f"accuracy_{tag}"
    started = time.time()
    for entry in plan:
        task = entry.task
        result["tasks"].append(
            task.describe()
            | {
                "sparsities": list(entry.sparsities),
                "budgets": [
                    *(entry.budgets if entry.sparsities else ()),
                    *entry.patterns,
                    *(b for b, _ in entry.channel_budgets()),
                ],
            }
        )
        for seed in grid.seeds:
            # (method, budget rule or N:M pattern, sparsity, pattern or None)
            jobs: list[tuple[str, str, float, str | None]] = (
                [("dense", "dense", 0.0, None)] if grid.dense else []
            )
            jobs += [(m, b, s, None) for s in entry.sparsities for b in entry.budgets for m in grid.methods]
            jobs += [(m, p, nm_sparsity(p), p) for p in entry.patterns for m in grid.nm_methods]
            jobs += [
                (m, budget, f, pattern)
                for budget, pattern in entry.channel_budgets()
                for f in entry.channel_flops
                for m in grid.channel_methods
            ]
            for method, budget, sparsity, pattern in jobs:
                label = (
                    f"{task.name} {method} {sparsity:.0%}"
                    + ("" if method == "dense" else f" {budget}")
                    + f" s{seed}"
                )
                spec = METHODS.get(method)
                chosen = (
                    setup if pattern else replace(setup, budget=budget)
                )  # N:M and channels set their own shares
                config_for = partial(spec.config, sparsity, setup=chosen, pattern=pattern) if spec else None
                outcome = task.run(seed, config_for, progress, label)
                row = {
                    "task": task.name,
                    "method": method,
                    "budget": budget,
                    "sparsity": sparsity,
                    "seed": seed,
                    **asdict(outcome),
                }
                result["rows"].append(row)
                log(
                    f"{label}: accuracy {100 * outcome.accuracy:.2f}%  "
                    f"sparsity {outcome.achieved_sparsity:.4f}  {outcome.seconds:.0f} s"
                )
                result["tasks"][-1].update(task.describe())
                result["cells"] = summarise(result["rows"])
                result["wall_seconds"] = time.time() - started
                atomic_write_json(_beside(stem, ".json"), result)
                atomic_write_text(_beside(stem, ".md"), _markdown(result))
    _plot(result, _beside(stem, ".png"))
    return result


def merge_results(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    tag: str,
    notes: Sequence[str] = (),
    command: str | None = None,
) -> dict[str, Any]:
    """Combine the result files of several invocations (e.g. one per budget rule) into one.

    The files must come from the same kind of run: same mode and pruning setup apart from
    budgets, and identical settings for any task they share (seeds may be split across files;
    each cell reports its own n). Dense rows measured twice for the same (task, seed) are kept
    once. Rows and commands are kept as measured, nothing is re-run: the merged file's
    ``command`` lists the runs' commands, ``merge_command`` (``command``) the merge, ``commit``
    the commit at the merge and ``run_commits`` the runs' own.
    """
    results = [_load_result(Path(p)) for p in paths]
    if len(results) < 2:
        raise ValueError("give two or more result files to merge")
    first = results[0]
    for path, other in zip(paths[1:], results[1:]):
        for key in ("benchmark", "mode", "setup"):
            if _comparable(other[key]) != _comparable(first[key]):
                raise ValueError(
                    f"{path} differs from {paths[0]} in {key!r}; only runs of one kind can be merged"
                )
    tasks: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for path, result in zip(paths, results):
        for task in result["tasks"]:
            known = tasks.get(task["task"])
            measured = ("sparsities", "budgets", "pretrained_accuracy")  # may differ between files
            settings = {k: v for k, v in task.items() if k not in measured}
            if known is None:
                tasks[task["task"]] = dict(task)
                continue
            if {k: v for k, v in known.items() if k not in measured} != settings:
                raise ValueError(f"task {task['task']} was trained with other settings in {path}")
            known["sparsities"] = sorted(set(known["sparsities"]) | set(task["sparsities"]))
            known["budgets"] = list(dict.fromkeys([*known["budgets"], *task["budgets"]]))
            if "pretrained_accuracy" in task:
                known["pretrained_accuracy"] = {
                    **known.get("pretrained_accuracy", {}),
                    **task["pretrained_accuracy"],
                }
        for row in result["rows"]:
            key = (row["task"], row["method"], row["budget"], row["sparsity"], row["seed"])
            if key in seen:
                if row["method"] == "dense":
                    continue
                raise ValueError(f"{path} measures {key} again; merge files that measure different cells")
            seen.add(key)
            rows.append(row)
    methods = list(dict.fromkeys(m for r in results for m in r["grid"]["methods"]))
    merged = first | {
        "command": " ; ".join(r["command"] for r in results),
        "merge_command": command,
        "commit": git_commit(),
        "run_commits": [r.get("commit", "unknown") for r in results],
        "grid": {"methods": methods, "seeds": sorted({seed for r in results for seed in r["grid"]["seeds"]})},
        "tasks": list(tasks.values()),
        "rows": rows,
        "cells": summarise(rows),
        "wall_seconds": sum(r.get("wall_seconds", 0.0) for r in results),
        "merged_from": [Path(p).name for p in paths],
        "notes": [*first.get("notes", []), *notes],
    }
    stem = Path(out_dir) / f"accuracy_{tag}"
    atomic_write_json(_beside(stem, ".json"), merged)
    atomic_write_text(_beside(stem, ".md"), _markdown(merged))
    _plot(merged, _beside(stem, ".png"))
    return merged


def _beside(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix``: a tag may hold dots ("settle0.5"), which with_suffix would cut."""
    return stem.with_name(stem.name + suffix)


def _comparable(value: Any) -> Any:
    """A setup without its budget rule (budgets are an axis that merged files may differ in)."""
    return {k: v for k, v in value.items() if k != "budget"} if isinstance(value, dict) else value


def _load_result(path: Path) -> dict[str, Any]:
    """A result file, with files from before budgets were an axis read as their one budget."""
    result = json.loads(path.read_text())
    missing = [
        k for k in ("benchmark", "mode", "command", "setup", "grid", "tasks", "rows") if k not in result
    ]
    if result.get("benchmark") != "accuracy" or missing:
        raise ValueError(
            f"{path} is not an accuracy result file of `python -m benchmarks.accuracy` "
            f"(missing {missing or ['benchmark']})"
        )
    for task in result["tasks"]:
        task.setdefault("budgets", [result["setup"]["budget"]])
    for row in result["rows"]:
        row.setdefault("budget", "dense" if row["method"] == "dense" else result["setup"]["budget"])
    if not any(row["budget"].startswith("channel") for row in result["rows"]):
        result["setup"].setdefault("channel_tau", Channels().tau)  # no channel runs: the value played no part
    result["setup"].setdefault("channel_settle", 0.5)  # the only value before the option existed
    result["setup"].setdefault("channel_ramp", None)  # channel runs shared the ramp before it was an option
    return result

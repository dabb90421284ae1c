"""Dense vs PDP at 90% unstructured sparsity: SmallCNN on the full Fashion-MNIST, same epochs.

Both twins of each seed share initialisation, data order, optimizer (Adam, cosine decay) and
epochs; only the pruner differs. Target (issue: core): the pruned model loses < 1.5 points.

    python -m benchmarks.fashion_mnist_unstructured --seeds 0 1 2 --epochs 8

It runs `pdprune demo`'s comparison (pdprune.demo.run_comparison) at full size. Needs Fashion-MNIST
(apt-get install dataset-fashion-mnist). Writes fashion_mnist_unstructured_<machine>.json and .md to
benchmarks/results/accuracy/, with the command and commit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pdprune
from benchmarks.harness.provenance import RESULTS, provenance
from pdprune.demo import run_comparison
from pdprune.io import atomic_write_json, atomic_write_text, ensure_writable_folder
from pdprune.machine import machine_info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--machine-tag", default="cpu-2core")
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    ensure_writable_folder(args.out)

    started = time.time()
    runs = []
    for seed in args.seeds:
        result = run_comparison(
            "fashion-mnist", sparsity=args.sparsity, epochs=args.epochs, seed=seed, progress=False
        )
        row = result.to_dict()
        row.pop("report")
        runs.append(row)
        print(
            f"seed {seed}: dense {result.dense_accuracy:.4f}  PDP {result.pruned_accuracy:.4f}  "
            f"sparsity {result.report.achieved_sparsity:.4f}",
            flush=True,
        )
    drops = [r["accuracy_drop_points"] for r in runs]
    dense = [100 * r["dense_accuracy"] for r in runs]
    pruned = [100 * r["pruned_accuracy"] for r in runs]

    def sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    summary = {
        "benchmark": "fashion_mnist_unstructured",
        **provenance("benchmarks.fashion_mnist_unstructured", argv),
        "machine": machine_info(),
        "model": "SmallCNN (pdprune.demo), width 32",
        "setup": "full Fashion-MNIST 60k/10k; Adam lr 2e-3 cosine, batch 64; PDP with the library's "
        f"default temperature (relative_tau {pdprune.DEFAULT_RELATIVE_TAU:g}, settle "
        f"{pdprune.DEFAULT_WEIGHT_SETTLE:g}), global budgets, warm-up 10%, linear ramp 50%; dense "
        "and pruned twins share init and data order per seed",
        "epochs": args.epochs,
        "seeds": args.seeds,
        "sparsity": args.sparsity,
        "dense_accuracy_mean": statistics.mean(dense),
        "dense_accuracy_std": sd(dense),
        "pruned_accuracy_mean": statistics.mean(pruned),
        "pruned_accuracy_std": sd(pruned),
        "drop_points_mean": statistics.mean(drops),
        "drop_points_max": max(drops),
        "target": "drop < 1.5 points",
        "target_met": max(drops) < 1.5,
        "wall_seconds": time.time() - started,
        "runs": runs,
    }
    stem = args.out / f"fashion_mnist_unstructured_{args.machine_tag}"
    atomic_write_json(stem.with_suffix(".json"), summary)
    lines = [
        f"# Fashion-MNIST, SmallCNN, {args.sparsity:.0%} unstructured sparsity",
        "",
        f"Command: `{summary['command']}`  ",
        f"Commit: {summary['commit']}  ",
        (
            f"Machine: {summary['machine']['cpu']}, {summary['machine']['torch_threads']} torch threads, "
            f"torch {summary['machine']['torch']}  "
        ),
        f"Setup: {summary['setup']}; {args.epochs} epochs for each run.",
        "",
        "| seed | dense | PDP | drop (points) | sparsity |",
        "|---|---|---|---|---|",
        *(
            f"| {r['seed']} | {100 * r['dense_accuracy']:.2f} | {100 * r['pruned_accuracy']:.2f} | "
            f"{r['accuracy_drop_points']:.2f} | {r['achieved_sparsity']:.4f} |"
            for r in runs
        ),
        (
            f"| mean ± sd | {summary['dense_accuracy_mean']:.2f} ± {summary['dense_accuracy_std']:.2f} | "
            f"{summary['pruned_accuracy_mean']:.2f} ± {summary['pruned_accuracy_std']:.2f} | "
            f"{summary['drop_points_mean']:.2f} | |"
        ),
        "",
        (
            f"Target: drop < 1.5 points for every seed: {'met' if summary['target_met'] else 'NOT met'} "
            f"(largest drop {summary['drop_points_max']:.2f})."
        ),
    ]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

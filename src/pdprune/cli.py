"""Command line: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pdprune.config import DEFAULT_TAU
from pdprune.data import DATASETS, FashionMNISTNotFound
from pdprune.functional import check_sparsity, check_tau
from pdprune.io import atomic_write_json

__all__ = ["main"]


def _sparsity(text: str) -> float:
    try:
        return check_sparsity(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _tau(text: str) -> float:
    try:
        return check_tau(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdprune", description="Prune PyTorch models while they train (PDP, Cho et al. 2023)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a small CNN dense and with PDP on real data; compare accuracy and size",
        description="Train a small CNN dense and with PDP for the same epochs on real data, then "
        "print test accuracy, sparsity and parameter counts and write a report.",
    )
    demo.add_argument("--dataset", choices=sorted(DATASETS), default="digits",
                      help="digits (ships with scikit-learn, default) or fashion-mnist "
                      "(Debian package dataset-fashion-mnist)")
    demo.add_argument("--sparsity", type=_sparsity, default=0.9, help="fraction of weights removed (default 0.9)")
    demo.add_argument("--epochs", type=_positive_int, default=None,
                      help="epochs for each of the two runs (default: 30 for digits, 8 for fashion-mnist)")
    demo.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order")
    demo.add_argument("--tau", type=_tau, default=DEFAULT_TAU, help=f"mask temperature (default {DEFAULT_TAU})")
    demo.add_argument("--train-limit", type=_positive_int, default=None,
                      help="use only the first N training examples (quick runs)")
    demo.add_argument("--out", type=Path, default=None,
                      help="folder for report.json, report.txt, sparsity.png and comparison.json "
                      "(default: pdprune-results/demo-<dataset>)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from pdprune.demo import run_comparison

    print(f"pdprune demo: SmallCNN on {args.dataset}, target sparsity {args.sparsity:.0%}, seed {args.seed}",
          flush=True)
    result = run_comparison(
        dataset=args.dataset,
        sparsity=args.sparsity,
        epochs=args.epochs,
        seed=args.seed,
        tau=args.tau,
        train_limit=args.train_limit,
        progress=not args.no_progress,
    )
    print(f"{result.train_examples:,} training / {result.test_examples:,} test images, "
          f"{result.epochs} epochs for each run\n")
    print(result.report.to_text())
    print()
    rows = [
        ("", "dense", f"PDP {args.sparsity:.0%}"),
        ("test accuracy", f"{result.dense_accuracy:.2%}", f"{result.pruned_accuracy:.2%}"),
        ("nonzero parameters", f"{result.dense_params:,}", f"{result.pruned_nonzero_params:,}"),
        ("sparsity of pruned layers", "0.000", f"{result.report.achieved_sparsity:.3f}"),
        ("training time", f"{result.dense_seconds:.1f} s", f"{result.pruned_seconds:.1f} s"),
    ]
    for label, dense, pruned in rows:
        print(f"{label:<27}{dense:>12}{pruned:>12}")
    out = args.out if args.out is not None else Path("pdprune-results") / f"demo-{args.dataset}"
    written = result.report.save(out)
    written.append(atomic_write_json(out / "comparison.json", result.to_dict()))
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _run_demo(args)
    except (FashionMNISTNotFound, ImportError, ValueError) as error:
        print(f"pdprune: error: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""Command line: parses arguments, calls the library, prints. No logic of its own.

The research benchmarks (accuracy grid, merge) are not commands of the installed package: from a
checkout of the repository, run ``python -m benchmarks.accuracy --help``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pdprune
from pdprune import argtypes
from pdprune.demo.data import DATASETS
from pdprune.io import atomic_write_json, ensure_writable_folder

__all__ = ["main"]


def _shape(text: str) -> tuple[int, ...]:
    from pdprune.bench.latency import parse_input_shape

    try:
        return parse_input_shape(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdprune", description="Prune PyTorch models while they train (PDP, Cho et al. 2023)."
    )
    parser.add_argument("--version", action="version", version=f"pdprune {pdprune.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a small CNN dense and with PDP on real data; compare accuracy and size",
        description="Train a small CNN dense and with PDP for the same epochs on real data, then "
        "print test accuracy, sparsity and parameter counts and write a report.",
    )
    demo.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="digits",
        help="digits (ships with scikit-learn, default) or fashion-mnist "
        "(Debian package dataset-fashion-mnist)",
    )
    demo.add_argument(
        "--sparsity",
        type=argtypes.sparsity,
        default=None,
        help="fraction of weights removed (default 0.9), or of channels with --pattern channel (default 0.5)",
    )
    demo.add_argument(
        "--pattern",
        default="unstructured",
        metavar="{unstructured,N:M,channel}",
        help="unstructured (default); N:M such as 2:4 or 1:4 (then --sparsity does not apply; "
        "layers N:M cannot divide stay dense and the report says so); or channel (--sparsity is the "
        "fraction of channels removed, default 0.5; the model is shrunk and its latency measured)",
    )
    demo.add_argument(
        "--epochs",
        type=argtypes.positive_int,
        default=None,
        help="epochs for each of the two runs (default: 30 for digits, 8 for fashion-mnist)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order")
    demo.add_argument(
        "--tau",
        type=argtypes.tau,
        default=None,
        help="a fixed mask temperature in squared-weight units, as in the paper (e.g. "
        f"{pdprune.DEFAULT_TAU:g}); default: {pdprune.DEFAULT_RELATIVE_TAU:g} of each layer's mean "
        f"squared weight. With --pattern channel: relative to t^2, default {pdprune.Channels().tau:g}",
    )
    demo.add_argument(
        "--train-limit",
        type=argtypes.positive_int,
        default=None,
        help="use only the first N training examples (quick runs)",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for report.json, report.txt, sparsity.png and comparison.json "
        "(default: pdprune-results/demo-<dataset>)",
    )
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")

    bench = commands.add_parser("bench", help="benchmarks that write result files").add_subparsers(
        dest="bench", required=True
    )
    latency = bench.add_parser(
        "latency",
        help="dense vs pruned inference time on this machine, with warnings where a pattern cannot pay",
        description="Prune a model at initialisation to each pattern (channel: shrunk, widths rounded to "
        "8), then time dense and pruned side by side on this device; print medians, ratios and the reasons "
        "a pattern will not be faster here; write latency_<tag>.json/.md with the command and commit.",
    )
    latency.add_argument(
        "--model",
        default="small-cnn",
        metavar="{small-cnn,MODULE:CALLABLE}",
        help="small-cnn (built in, 1x1x28x28), or your own model: MODULE:CALLABLE, a factory "
        "returning an nn.Module, imported from the working directory or installed packages, "
        "e.g. mypackage.models:build or, from a checkout of pdprune, "
        "benchmarks.harness.models:ResNet18 (give --input-shape with it)",
    )
    latency.add_argument(
        "--input-shape",
        type=_shape,
        default=None,
        metavar="B,C,H,W",
        help="shape of one float input batch, e.g. 1,3,224,224; its first size (the batch) is "
        "replaced by each of --batches (required with MODULE:CALLABLE)",
    )
    latency.add_argument(
        "--patterns",
        nargs="+",
        default=["unstructured", "2:4", "channel"],
        help="unstructured, N:M such as 2:4, channel (default: all three)",
    )
    latency.add_argument(
        "--sparsity",
        type=argtypes.sparsity,
        default=0.5,
        help="unstructured sparsity, and the fraction of FLOPs channel pruning removes (default 0.5)",
    )
    latency.add_argument("--batches", nargs="+", type=argtypes.positive_int, default=[1, 32])
    latency.add_argument(
        "--device", default="cuda" if _cuda() else "cpu", help="cpu or cuda (default: cuda if present)"
    )
    latency.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    latency.add_argument(
        "--threads", type=argtypes.positive_int, default=None, help="torch CPU threads (default: torch's)"
    )
    latency.add_argument(
        "--memory-format",
        choices=["channels_last", "contiguous"],
        default="channels_last",
        help="layout of image models and inputs (default channels_last, the faster one on CPU)",
    )
    latency.add_argument("--repeats", type=argtypes.positive_int, default=20)
    latency.add_argument("--out", type=Path, default=Path("pdprune-results") / "latency")
    latency.add_argument(
        "--tag", default=None, help="result file name suffix (default: <model or CALLABLE>-<device>)"
    )
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_bench_latency(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from pdprune.bench.latency import run_latency_benchmark
    from pdprune.machine import command_line

    payload = run_latency_benchmark(
        model=args.model,
        patterns=tuple(args.patterns),
        sparsity=args.sparsity,
        batches=tuple(args.batches),
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        channels_last=args.memory_format == "channels_last",
        repeats=args.repeats,
        out=args.out,
        tag=args.tag,
        input_shape=args.input_shape,
        command=command_line("pdprune", argv),
    )
    print(f"wrote {' and '.join(payload['written'])}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from pdprune.demo import demo_target, run_comparison

    target = demo_target(args.pattern, args.sparsity)  # contradictions fail before any training
    out = ensure_writable_folder(
        args.out if args.out is not None else Path("pdprune-results") / f"demo-{args.dataset}"
    )
    print(f"pdprune demo: SmallCNN on {args.dataset}, {target.text}, seed {args.seed}", flush=True)
    result = run_comparison(
        dataset=args.dataset,
        sparsity=args.sparsity,
        pattern=args.pattern,
        epochs=args.epochs,
        seed=args.seed,
        tau=args.tau,
        train_limit=args.train_limit,
        progress=not args.no_progress,
    )
    print(
        f"{result.train_examples:,} training / {result.test_examples:,} test images, "
        f"{result.epochs} epoch{'s' if result.epochs != 1 else ''} for each run\n"
    )
    print(result.report.to_text())
    print()
    rows = [
        ("", "dense", target.label),
        ("test accuracy", f"{result.dense_accuracy:.2%}", f"{result.pruned_accuracy:.2%}"),
        ("nonzero parameters", f"{result.dense_params:,}", f"{result.pruned_nonzero_params:,}"),
        (
            "channels removed" if target.channels else "sparsity of pruned layers",
            "0.000",
            f"{result.report.achieved_sparsity:.3f}",
        ),
        ("training time", f"{result.dense_seconds:.1f} s", f"{result.pruned_seconds:.1f} s"),
    ]
    if result.latency is not None:
        rows.append(
            (
                f"latency, batch {result.latency.batch}",
                f"{result.latency.dense_ms:.2f} ms",
                f"{result.latency.pruned_ms:.2f} ms",
            )
        )
    for row_label, dense, pruned in rows:
        print(f"{row_label:<27}{dense:>12}{pruned:>12}")
    if result.latency is not None:
        print(
            f"measured speedup of the shrunk model: {result.latency.speedup:.2f}x "
            f"({result.latency.threads} threads, medians of {result.latency.repeats})"
        )
    written = result.report.save(out)
    written.append(atomic_write_json(out / "comparison.json", result.to_dict()))
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _run_demo(args)
        if args.command == "bench" and args.bench == "latency":
            return _run_bench_latency(args, argv)
    except (OSError, ImportError, ValueError, TypeError) as error:
        print(f"pdprune: error: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())

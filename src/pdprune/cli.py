"""Command line: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pdprune.bench.latency import LATENCY_MODELS
from pdprune.bench.methods import PruningSetup
from pdprune.config import BUDGETS, DEFAULT_TAU
from pdprune.pattern import Channels
from pdprune.data import DATASETS
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


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 0.9:
        raise argparse.ArgumentTypeError(f"must be a fraction of the steps between 0 and 0.9, got {text}")
    return value


def _settle(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction of the steps after the ramp in (0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdprune", description="Prune PyTorch models while they train (PDP, Cho et al. 2023)."
    )
    from pdprune import __version__

    parser.add_argument("--version", action="version", version=f"pdprune {__version__}")
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
    demo.add_argument("--sparsity", type=_sparsity, default=None,
                      help="fraction of weights removed (default 0.9), or of channels with --pattern channel (default 0.5)")
    demo.add_argument("--pattern", default="unstructured", metavar="{unstructured,N:M,channel}",
                      help="unstructured (default); N:M such as 2:4 or 1:4 (then --sparsity does not apply; "
                      "layers N:M cannot divide stay dense and the report says so); or channel (--sparsity is the "
                      "fraction of channels removed, default 0.5; the model is shrunk and its latency measured)")
    demo.add_argument("--epochs", type=_positive_int, default=None,
                      help="epochs for each of the two runs (default: 30 for digits, 8 for fashion-mnist)")
    demo.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order")
    demo.add_argument("--tau", type=_tau, default=None,
                      help=f"mask temperature (default {DEFAULT_TAU}; with --pattern channel, relative to t^2, default {Channels().tau:g})")
    demo.add_argument("--train-limit", type=_positive_int, default=None,
                      help="use only the first N training examples (quick runs)")
    demo.add_argument("--out", type=Path, default=None,
                      help="folder for report.json, report.txt, sparsity.png and comparison.json "
                      "(default: pdprune-results/demo-<dataset>)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")

    bench = commands.add_parser("bench", help="benchmarks that write result files").add_subparsers(
        dest="bench", required=True
    )
    accuracy = bench.add_parser(
        "accuracy",
        help="dense vs PDP vs baselines at equal budget, several seeds",
        description="Train dense, PDP and baselines with the same epochs, optimizer, LR schedule, budgets "
        "and seeds; write accuracy_<tag>.json/.md/.png with mean and sd per cell.",
    )
    accuracy.add_argument("--quick", action="store_true",
                          help="smoke test of the whole pipeline (a few minutes): tiny data, 2 seeds, 90%% only")
    accuracy.add_argument("--tasks", nargs="+", choices=["resnet", "mobilenetv2", "minilm"],
                          default=["resnet", "mobilenetv2", "minilm"],
                          help="Fashion-MNIST ResNet / MobileNetV2, Rotten Tomatoes MiniLM-L6")
    accuracy.add_argument("--methods", nargs="+", default=["pdp", "gmp", "oneshot"])
    accuracy.add_argument("--sparsities", nargs="*", type=_sparsity, default=[0.8, 0.9, 0.95, 0.98, 0.99],
                          help="unstructured sparsities for the image tasks (none: only --patterns)")
    accuracy.add_argument("--text-sparsities", nargs="*", type=_sparsity, default=[0.9],
                          help="unstructured sparsities for the MiniLM task (default 0.9; none: skip them)")
    accuracy.add_argument("--text-channel-flops", nargs="+", type=_sparsity, default=[], metavar="FRACTION",
                          help="prune MiniLM's attention heads and FFN rows to these fractions of the encoder's "
                               "Linear FLOPs removed, e.g. 0.5 (run with --channel-methods)")
    accuracy.add_argument("--patterns", nargs="+", default=[], metavar="N:M",
                          help="N:M patterns for the image tasks, e.g. 2:4 1:4 (run with --nm-methods)")
    accuracy.add_argument("--nm-methods", nargs="+", default=["pdp", "oneshot", "srste"],
                          help="methods for the N:M patterns (default pdp oneshot srste)")
    accuracy.add_argument("--channel-flops", nargs="+", type=_sparsity, default=[], metavar="FRACTION",
                          help="channel pruning of the image tasks to these fractions of FLOPs removed, e.g. 0.5")
    accuracy.add_argument("--channel-methods", nargs="+", default=["pdp", "l1channel"],
                          help="methods for channel pruning (default pdp l1channel)")
    accuracy.add_argument("--budgets", nargs="+", choices=BUDGETS, default=["global"],
                          help="per-layer budget rules for the image tasks, each its own axis (default global)")
    accuracy.add_argument("--text-budgets", nargs="+", choices=BUDGETS, default=["uniform"],
                          help="per-layer budget rules for MiniLM (default uniform)")
    accuracy.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    accuracy.add_argument("--epochs", type=_positive_int, default=3, help="epochs for the image tasks")
    accuracy.add_argument("--train-limit", type=_positive_int, default=None,
                          help="first N Fashion-MNIST training images (default: all 60k)")
    accuracy.add_argument("--text-steps", type=_positive_int, default=250)
    accuracy.add_argument("--text-lr", type=float, default=1e-4)
    accuracy.add_argument("--distill", choices=["off", "on", "both"], default="off",
                          help="MiniLM: distil from the dense fine-tuned model of the same seed "
                               "(both: each method with, then without; each dense model is trained once)")
    accuracy.add_argument("--tau", type=_tau, default=DEFAULT_TAU)
    accuracy.add_argument("--ramp", type=_fraction, default=PruningSetup().ramp,
                          help=f"fraction of the steps over which pruning ramps in, for every method "
                               f"(default {PruningSetup().ramp:g}; 0: the full budget at the end of warm-up)")
    accuracy.add_argument("--channel-scopes", nargs="+", choices=["all", "expansion"], default=["all"],
                          help="channel groups that share the budget: all, or only those through a depthwise "
                               "convolution (expansion); several give one run each")
    accuracy.add_argument("--channel-settle", type=_settle, default=Channels().settle,
                          help="fraction of the steps after the ramp over which PDP's channel masks harden "
                               f"(default {Channels().settle:g})")
    accuracy.add_argument("--channel-ramp", type=_fraction, default=PruningSetup().channel_ramp,
                          help=f"fraction of the steps over which channel pruning ramps in, for PDP and L1-norm "
                               f"alike (default {PruningSetup().channel_ramp:g})")
    accuracy.add_argument("--channel-tau", type=_tau, default=Channels().tau,
                          help=f"PDP channel mask temperature, relative to t^2 (default {Channels().tau:g})")
    accuracy.add_argument("--tag", default=None, help="result file name suffix (default: quick or cpu-<N>core)")
    accuracy.add_argument("--out", type=Path, default=Path("benchmarks") / "results")
    accuracy.add_argument("--mode", default="full grid",
                          help="one line saying what kind of run this is, written into the results")
    accuracy.add_argument("--no-dense", action="store_true",
                          help="skip the dense runs (for ablations whose dense reference is already measured)")
    accuracy.add_argument("--no-progress", action="store_true")
    latency = bench.add_parser(
        "latency",
        help="dense vs pruned inference time on this machine, with warnings where a pattern cannot pay",
        description="Prune a reference model at initialisation to each pattern (channel: shrunk, widths rounded "
        "to 8), then time dense and pruned side by side on this device; print medians, ratios and the reasons a "
        "pattern will not be faster here; write latency_<tag>.json/.md.",
    )
    latency.add_argument("--model", choices=list(LATENCY_MODELS), default="resnet18",
                         help="resnet18 / mobilenetv2 take 3x224x224; the small-* models 1x28x28 (default resnet18)")
    latency.add_argument("--patterns", nargs="+", default=["unstructured", "2:4", "channel"],
                         help="unstructured, N:M such as 2:4, channel (default: all three)")
    latency.add_argument("--sparsity", type=_sparsity, default=0.5,
                         help="unstructured sparsity, and the fraction of FLOPs channel pruning removes (default 0.5)")
    latency.add_argument("--batches", nargs="+", type=_positive_int, default=[1, 32])
    latency.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu or cuda (default: cuda if present)")
    latency.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    latency.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    latency.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last",
                         help="layout of image models and inputs (default channels_last, the faster one on CPU)")
    latency.add_argument("--repeats", type=_positive_int, default=20)
    latency.add_argument("--out", type=Path, default=Path("pdprune-results") / "latency")
    latency.add_argument("--tag", default=None, help="result file name suffix (default: <model>-<device>)")
    merge = bench.add_parser(
        "merge",
        help="combine accuracy result files of one kind of run into one (json, md, png)",
        description="Combine the result files of several `bench accuracy` invocations (for example one per "
        "budget rule or task) into one set of files. Nothing is re-run.",
    )
    merge.add_argument("files", nargs="+", type=Path, help="accuracy_<tag>.json files")
    merge.add_argument("--tag", required=True, help="name of the merged files: accuracy_<tag>.json/.md/.png")
    merge.add_argument("--out", type=Path, default=Path("benchmarks") / "results")
    merge.add_argument("--note", action="append", default=[], help="a line for the Notes section (repeatable)")
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_bench_latency(args: argparse.Namespace) -> int:
    from pdprune.bench.latency import run_latency_benchmark

    payload = run_latency_benchmark(
        model=args.model, patterns=tuple(args.patterns), sparsity=args.sparsity, batches=tuple(args.batches),
        device=args.device, dtype=args.dtype, threads=args.threads,
        channels_last=args.memory_format == "channels_last", repeats=args.repeats, out=args.out, tag=args.tag,
    )
    print(f"wrote {' and '.join(payload['written'])}")
    return 0


def _run_bench_merge(args: argparse.Namespace) -> int:
    from pdprune.bench.accuracy import merge_results
    from pdprune.io import ensure_writable_folder

    ensure_writable_folder(args.out)
    merged = merge_results(args.files, args.out, args.tag, notes=args.note)
    print(f"merged {len(args.files)} files, {len(merged['rows'])} runs: {args.out / f'accuracy_{args.tag}'}.json, .md and .png")
    return 0


def _nm_pattern(text: str) -> str:
    from pdprune.pattern import NM, parse_pattern

    pattern = parse_pattern(text)
    if not isinstance(pattern, NM):
        raise ValueError(f"--patterns takes N:M patterns such as 2:4, got {text!r}")
    return str(pattern)


def _run_bench_accuracy(args: argparse.Namespace) -> int:
    import os

    from pdprune.bench.accuracy import AccuracyGrid, PlanSettings, build_plan, run_accuracy
    from pdprune.bench.methods import PruningSetup
    from pdprune.io import ensure_writable_folder

    if not args.sparsities and not args.patterns and not args.channel_flops and set(args.tasks) - {"minilm"}:
        raise ValueError("nothing to measure the image tasks at: give --sparsities, --patterns or --channel-flops")
    if "minilm" in args.tasks and not args.text_sparsities and not args.text_channel_flops:
        raise ValueError("nothing to measure the MiniLM task at: give --text-sparsities or --text-channel-flops")
    ensure_writable_folder(args.out)
    settings = PlanSettings(
        epochs=args.epochs,
        train_limit=args.train_limit,
        image_sparsities=tuple(args.sparsities),
        text_sparsities=tuple(args.text_sparsities),
        text_channel_flops=tuple(dict.fromkeys(args.text_channel_flops)),
        image_budgets=tuple(dict.fromkeys(args.budgets)),
        image_patterns=tuple(_nm_pattern(p) for p in dict.fromkeys(args.patterns)),
        image_channel_flops=tuple(dict.fromkeys(args.channel_flops)),
        image_channel_scopes=tuple(dict.fromkeys(args.channel_scopes)),
        text_budgets=tuple(dict.fromkeys(args.text_budgets)),
        text_steps=args.text_steps,
        text_lr=args.text_lr,
        distill={"off": (False,), "on": (True,), "both": (True, False)}[args.distill],
    )
    plan = build_plan(args.tasks, settings, quick=args.quick)
    grid = AccuracyGrid(
        methods=tuple(args.methods),
        nm_methods=tuple(args.nm_methods),
        channel_methods=tuple(args.channel_methods),
        seeds=(0, 1) if args.quick else tuple(args.seeds),
        setup=PruningSetup(tau=args.tau, channel_tau=args.channel_tau, channel_settle=args.channel_settle, ramp=args.ramp,
                           channel_ramp=args.channel_ramp),
        dense=not args.no_dense,
    )
    tag = args.tag or ("quick" if args.quick else f"cpu-{os.cpu_count()}core")
    command = "pdprune " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "pdprune bench accuracy"
    mode = "quick smoke test on tiny data: not an accuracy result" if args.quick else args.mode
    run_accuracy(plan, grid, args.out, tag, command, mode, progress=not args.no_progress)
    print(f"wrote {args.out / f'accuracy_{tag}'}.json, .md and .png")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from pdprune.demo import run_comparison
    from pdprune.io import ensure_writable_folder
    from pdprune.pattern import NM, Channels, parse_pattern

    parsed = parse_pattern(args.pattern)
    nm = parsed if isinstance(parsed, NM) else None
    channels = isinstance(parsed, Channels)
    if nm is not None and args.sparsity is not None:
        raise ValueError(f"--sparsity does not apply to --pattern {nm} (it removes {nm.sparsity:g} of every group); drop one")
    sparsity = args.sparsity if args.sparsity is not None else (0.5 if channels else 0.9)
    if nm is not None:
        target, label = f"pattern {nm}", f"PDP {nm}"
    elif channels:
        target, label = f"{sparsity:.0%} of the channels", f"PDP ch {sparsity:.0%}"
    else:
        target, label = f"target sparsity {sparsity:.0%}", f"PDP {sparsity:.0%}"
    out = ensure_writable_folder(args.out if args.out is not None else Path("pdprune-results") / f"demo-{args.dataset}")
    print(f"pdprune demo: SmallCNN on {args.dataset}, {target}, seed {args.seed}", flush=True)
    result = run_comparison(
        dataset=args.dataset,
        sparsity=sparsity,
        pattern=args.pattern,
        epochs=args.epochs,
        seed=args.seed,
        tau=args.tau,
        train_limit=args.train_limit,
        progress=not args.no_progress,
    )
    print(f"{result.train_examples:,} training / {result.test_examples:,} test images, "
          f"{result.epochs} epoch{'s' if result.epochs != 1 else ''} for each run\n")
    print(result.report.to_text())
    print()
    rows = [
        ("", "dense", label),
        ("test accuracy", f"{result.dense_accuracy:.2%}", f"{result.pruned_accuracy:.2%}"),
        ("nonzero parameters", f"{result.dense_params:,}", f"{result.pruned_nonzero_params:,}"),
        ("sparsity of pruned layers", "0.000", f"{result.report.achieved_sparsity:.3f}") if not channels
        else ("channels removed", "0.000", f"{result.report.achieved_sparsity:.3f}"),
        ("training time", f"{result.dense_seconds:.1f} s", f"{result.pruned_seconds:.1f} s"),
    ]
    if result.latency is not None:
        rows.append((f"latency, batch {result.latency.batch}", f"{result.latency.dense_ms:.2f} ms",
                     f"{result.latency.pruned_ms:.2f} ms"))
    for row_label, dense, pruned in rows:
        print(f"{row_label:<27}{dense:>12}{pruned:>12}")
    if result.latency is not None:
        print(f"measured speedup of the shrunk model: {result.latency.speedup:.2f}x "
              f"({result.latency.threads} threads, medians of {result.latency.repeats})")
    written = result.report.save(out)
    written.append(atomic_write_json(out / "comparison.json", result.to_dict()))
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _run_demo(args)
        if args.command == "bench" and args.bench == "accuracy":
            return _run_bench_accuracy(args)
        if args.command == "bench" and args.bench == "latency":
            return _run_bench_latency(args)
        if args.command == "bench" and args.bench == "merge":
            return _run_bench_merge(args)
    except (OSError, ImportError, ValueError, TypeError) as error:
        print(f"pdprune: error: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())

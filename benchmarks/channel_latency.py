"""CPU latency of channel-shrunk ResNet-18 and MobileNetV2 at 224x224 against their dense twins.

Latency depends on layer shapes, not on trained values, so the models are pruned at
initialisation (PDP's channel scores at init pick the channels) and shrunk at once; the shrunk
model's outputs are checked against the zeroed (masked) model's before timing. Dense and shrunk
run side by side in one process, interleaved, and the medians' ratio is reported, in both memory
layouts (PyTorch's default contiguous NCHW and channels_last, the layout oneDNN's CPU convolutions
prefer) and with widths left free or rounded to a multiple of 8. With ``--runtimes onnxruntime``
both models are also exported to ONNX (pdprune.export.save_onnx, outputs checked against PyTorch) and
timed in ONNX Runtime, which folds BatchNorm into the convolutions and fuses activations, as a
deployed model runs; ONNX Runtime picks its own memory layout, so those rows have none.

    python -m benchmarks.channel_latency --flops 0.5 --batches 1 32
    python -m benchmarks.channel_latency --flops 0.5 --round-to 8 --runtimes eager onnxruntime

Writes channel_latency_<tag>.json and .md to benchmarks/results/latency/ with the command and commit.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import pdprune
from benchmarks.harness.models import MobileNetV2, ResNet18
from benchmarks.harness.provenance import RESULTS, provenance
from pdprune.export import save_onnx
from pdprune.io import atomic_write_json, atomic_write_text, ensure_writable_folder
from pdprune.latency import compare_latency, compare_onnx_latency
from pdprune.machine import machine_info

MODELS = {"resnet18": ResNet18, "mobilenetv2": MobileNetV2}
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def shrink(
    name: str, flops: float, round_to: int, scope: str = "all"
) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """Dense model and its channel-shrunk twin at ``flops`` of the FLOPs removed."""
    torch.manual_seed(0)
    dense = MODELS[name]().eval()
    pruned = copy.deepcopy(dense)
    x = torch.randn(2, 3, 224, 224)
    config = pdprune.PruneConfig(
        sparsity=flops,
        pattern=pdprune.Channels(unit="flops", round_to=round_to, scope=scope),
        schedule=pdprune.Schedule(1, warmup=0, ramp=0),
    )
    pruner = pdprune.prepare(pruned, config, example_inputs=x[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hardening at step 0 is the point here
        pruner.finalize()
    pruned.eval()
    with torch.no_grad():
        masked = pruned(x)
        pruner.shrink()
        shrunk = pruned(x)
    report = pruner.report()
    info = {
        "round_to": round_to,
        "scope": scope,
        "params": list(report.params),
        "macs_per_image": list(report.macs),  # traced with one image
        "flops_removed": report.achieved_sparsity,
        "channel_sparsity": report.channel_sparsity,
        "max_relative_output_error": float((shrunk - masked).abs().max() / masked.abs().max()),
        "groups_left_alone": report.skipped,
    }
    return dense, pruned, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--flops",
        type=float,
        nargs="+",
        default=[0.5],
        help="fractions of FLOPs removed (default 0.5; a value near 1, e.g. 0.97, shows the time "
        "that does not shrink with channels)",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--round-to",
        type=int,
        nargs="+",
        default=[1, 8],
        help="channel widths rounded to a multiple of this (1: free)",
    )
    parser.add_argument(
        "--scopes",
        nargs="+",
        choices=["all", "expansion"],
        default=["all"],
        help="channel groups that share the budget (expansion: those through a depthwise conv; "
        "models without any are skipped)",
    )
    parser.add_argument("--memory-formats", nargs="+", choices=sorted(LAYOUTS), default=sorted(LAYOUTS))
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=["eager", "onnxruntime"],
        default=["eager"],
        help="PyTorch eager, and/or both models exported to ONNX and run in ONNX Runtime",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "latency")
    parser.add_argument("--tag", default=f"cpu-{os.cpu_count()}core")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    ensure_writable_folder(args.out)
    started = time.time()
    rows = []
    combos = [
        (n, f, s, r) for n in args.models for f in args.flops for s in args.scopes for r in args.round_to
    ]
    for name, flops, scope, round_to in combos:
        if scope == "expansion" and name == "resnet18":
            continue  # no depthwise convolutions: nothing in scope
        dense, shrunk, info = shrink(name, flops, round_to, scope)
        print(
            f"{name}, scope {scope}, widths rounded to {round_to}: params {info['params'][0]:,} -> "
            f"{info['params'][1]:,}, "
            f"MACs/image {info['macs_per_image'][0]:,} -> {info['macs_per_image'][1]:,}, "
            f"output error {info['max_relative_output_error']:.1e}",
            flush=True,
        )
        for layout in args.memory_formats if "eager" in args.runtimes else ():
            dense, shrunk = (m.to(memory_format=LAYOUTS[layout]) for m in (dense, shrunk))
            for batch in args.batches:
                x = torch.randn(batch, 3, 224, 224).to(memory_format=LAYOUTS[layout])
                result = compare_latency(dense, shrunk, x, repeats=args.repeats, warmup=3)
                print(f"  eager {layout}: {result.to_text()}", flush=True)
                rows.append(
                    {
                        "model": name,
                        "flops_target": flops,
                        "runtime": "eager",
                        "memory_format": layout,
                        **info,
                        **result.to_dict(),
                    }
                )
        if "onnxruntime" in args.runtimes:
            dense, shrunk = (m.to(memory_format=torch.contiguous_format) for m in (dense, shrunk))
            with tempfile.TemporaryDirectory() as folder:
                files = {}
                for label, model in (("dense", dense), ("shrunk", shrunk)):
                    files[label] = Path(folder) / f"{label}.onnx"
                    error = save_onnx(model, files[label], torch.randn(2, 3, 224, 224))
                    print(f"  onnx export of {label}: output error vs PyTorch {error:.1e}", flush=True)
                for batch in args.batches:
                    x = torch.randn(batch, 3, 224, 224)
                    result = compare_onnx_latency(
                        files["dense"], files["shrunk"], x, repeats=args.repeats, warmup=3
                    )
                    print(f"  onnxruntime: {result.to_text()}", flush=True)
                    rows.append(
                        {
                            "model": name,
                            "flops_target": flops,
                            "runtime": "onnxruntime",
                            "memory_format": "-",
                            **info,
                            **result.to_dict(),
                        }
                    )
    payload = {
        "benchmark": "channel latency",
        **provenance("benchmarks.channel_latency", argv),
        "machine": machine_info(),
        "flops_targets": args.flops,
        "note": "Pruned at initialisation: latency depends on layer shapes only.",
        "rows": rows,
        "wall_seconds": time.time() - started,
    }
    stem = args.out / f"channel_latency_{args.tag}"
    atomic_write_json(stem.with_suffix(".json"), payload)
    lines = [
        "# Channel pruning: CPU latency, dense vs shrunk (224x224)",
        "",
        f"Command: `{payload['command']}`  ",
        f"Commit: {payload['commit']}  ",
        (
            f"Machine: {payload['machine']['cpu']} ({payload['machine']['torch_threads']} torch threads), "
            f"torch {payload['machine']['torch']}. Targets: {', '.join(f'{f:.0%}' for f in args.flops)} of "
            "FLOPs removed by whole channels (PDP channel "
            f"scores at init), then physically removed. Medians of {args.repeats} interleaved runs, float32, "
            "eval mode "
            f"(runtimes: {', '.join(args.runtimes)})."
        ),
        "",
        (
            "| model | groups pruned | widths rounded to | runtime | memory format | batch | params dense -> "
            "shrunk | FLOPs removed | "
            "dense ms | shrunk ms | speedup | output error |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r.get('scope', 'all')} | {r['round_to']} | {r['runtime']} | "
            f"{r['memory_format']} | {r['batch']} | "
            f"{r['params'][0]:,} -> {r['params'][1]:,} | {r['flops_removed']:.1%} | "
            f"{r['dense_ms']:.1f} | {r['pruned_ms']:.1f} | {r['speedup']:.2f}x | "
            f"{r['max_relative_output_error']:.1e} |"
        )
    at_half = [r for r in rows if abs(r["flops_target"] - 0.5) < 1e-9]
    floor = [r for r in rows if r["flops_target"] >= 0.9]
    if floor:
        lines += [
            "",
            "Near-total FLOPs removal shows the time that does not shrink with channels (per-layer dispatch, "
            "memory-bound norms and activations at small shapes): "
            + "; ".join(
                f"{r['model']} b{r['batch']}: {r['pruned_ms']:.1f} ms = {r['pruned_ms'] / r['dense_ms']:.0%} "
                "of dense "
                f"with {r['flops_removed']:.0%} of FLOPs removed"
                for r in floor
            )
            + ". If time were that part plus a part proportional to FLOPs, removing 50% of FLOPs could give "
            "at most "
            + "; ".join(
                f"{r['model']} b{r['batch']}: "
                f"{1 / (r['pruned_ms'] / r['dense_ms'] + (1 - r['pruned_ms'] / r['dense_ms']) * 0.5):.2f}x"
                for r in floor
                if r["flops_target"] == max(f["flops_target"] for f in floor)
            )
            + ".",
        ]
    if at_half:
        lines += [
            "",
            "Target (issue: structured pruning): shrunk at 50% FLOPs >= 1.6x faster than dense. "
            + ", ".join(
                f"{r['model']} ({r.get('scope', 'all')}, round {r['round_to']}, {r['runtime']}"
                f"{'' if r['memory_format'] == '-' else ', ' + r['memory_format']}) b{r['batch']}: "
                f"{'met' if r['speedup'] >= 1.6 else 'not met'}"
                for r in at_half
            ),
        ]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

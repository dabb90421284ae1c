"""2:4 semi-structured GEMMs against dense on a CUDA GPU, through pdprune.accelerate_2to4.

For each (tokens, in, out) shape, one Linear layer is pruned to 2:4, and accelerate_2to4 times it
dense and sparse at that shape (CUDA events, medians) and decides; the decisions and timings are
written to a result file. Needs a CUDA GPU with compute capability 8.0 or newer.

    python -m benchmarks.semi_structured_gemm --dtype bfloat16 \
        --shapes 8192x4096x11008 8192x11008x4096 512x4096x4096

Writes semi_structured_gemm_<tag>.json and .md to benchmarks/results/latency/ with the command and commit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

import pdprune
from benchmarks.harness.provenance import RESULTS, provenance
from pdprune.io import atomic_write_json, atomic_write_text, ensure_writable_folder
from pdprune.machine import machine_info

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["8192x4096x11008", "8192x11008x4096", "2048x4096x11008", "512x4096x4096"],
        help="tokens x in_features x out_features",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS / "latency")
    parser.add_argument("--tag", default="gpu")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    ensure_writable_folder(args.out)
    started = time.time()
    rows = []
    for shape in args.shapes:
        tokens, d_in, d_out = (int(v) for v in shape.split("x"))
        layer = nn.Linear(d_in, d_out, bias=False)
        pruner = pdprune.prepare(
            layer, pdprune.PruneConfig(pattern="2:4", schedule=pdprune.Schedule(1, warmup=0, ramp=0))
        )
        pruner.step()
        pruner.finalize()
        layer = layer.to(device="cuda", dtype=DTYPES[args.dtype])
        x = torch.randn(tokens, d_in, device="cuda", dtype=DTYPES[args.dtype])
        (decision,) = pdprune.accelerate_2to4(layer, x, min_speedup=1.0, repeats=args.repeats)
        rows.append(decision.to_dict() | {"dtype": args.dtype})
        print(
            f"{shape} {args.dtype}: dense {decision.dense_ms} ms, sparse {decision.sparse_ms} ms -> "
            f"{decision.reason}",
            flush=True,
        )
    payload = {
        "benchmark": "2:4 semi-structured GEMM",
        **provenance("benchmarks.semi_structured_gemm", argv),
        "machine": machine_info(),
        "torch": torch.__version__,
        "rows": rows,
        "wall_seconds": time.time() - started,
    }
    stem = args.out / f"semi_structured_gemm_{args.tag}"
    atomic_write_json(stem.with_suffix(".json"), payload)
    lines = [
        "# 2:4 semi-structured vs dense GEMM",
        "",
        f"Command: `{payload['command']}`  ",
        f"Commit: {payload['commit']}  ",
        (
            f"Machine: {payload['machine'].get('gpu', '?')}, torch {torch.__version__}. Medians of "
            f"{args.repeats} "
            f"CUDA-event timings per kernel."
        ),
        "",
        "| tokens | in | out | dtype | dense ms | sparse ms | speedup | decision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        lines.append(
            f"| {r['tokens']} | {r['in_features']} | {r['out_features']} | {r['dtype']} | {r['dense_ms']} | "
            f"{r['sparse_ms']} | {speed} | {r['reason']} |"
        )
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

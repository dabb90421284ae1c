"""Training-step cost of PDP and GMP against dense: median step time (and peak memory on CUDA).

Five copies of one model (dense; PDP with its defaults: t selected exactly at every step, the mask
as fused kernels on large layers; "PDP tolerance 1e-2": t reused within a 1% count tolerance;
"PDP eager": the defaults with the eager mask kernels; GMP; 90% unstructured, global budgets)
train side by side in one process; each round times one optimizer step of each, in rotating
order, so a noisy machine slows all of them alike. Pruning is in force while timing: warm-up 0,
and the ramp spans the whole run (``--phase ramp``) or ends after the first step (``--phase after``, the final
sparsity throughout, as in most of a training run). With a tolerance PDP reuses a layer's t while
the count it keeps stays within 1% of the target count (checked before every use) and moves it by
counts when it strays; the table gives how often t was selected, reused and moved, with the
largest deviation (in % of the kept count). GMP
refreshes its mask every 100 steps as in the accuracy harness. With ``--compile`` every model runs
under ``torch.compile`` (inductor), which fuses PDP's mask maths into one loop forward and one
backward.

Besides time, it measures the memory each step keeps for backward beyond the parameters (every
tensor autograd saves, counted once per storage), so PDP's extra memory is read in copies of the
pruned weights on any device; on CUDA it also records the peak allocated memory.

    python -m benchmarks.step_cost --models resnet bert-stack --steps 30 --tokens 512 4096

Models: "resnet" (SmallResNet, batch 64 of 1x28x28) and "bert-stack" (12 BERT-base-shaped
blocks of Linear layers, 72 of them, 85M weights: q, k, v, output 768x768, FFN 768x3072 and
3072x768, with GELU and residuals; attention's softmax is left out as it has no prunable weights;
``--tokens`` tokens per step, one row per value). Writes step_cost_<tag>.json and .md to
benchmarks/results/step_cost/, with the command and commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import pdprune
from benchmarks.harness.models import SmallResNet
from benchmarks.harness.provenance import RESULTS, provenance
from pdprune.baselines import GMP
from pdprune.io import atomic_write_json, atomic_write_text, ensure_writable_folder
from pdprune.machine import machine_info

LABELS = ("dense", "pdp", "pdp-tol", "pdp-eager", "gmp")


class BertShapedStack(nn.Module):
    """The Linear layers of BERT-base in their order and shapes (12 blocks x 6 Linear)."""

    def __init__(self, blocks: int = 12, width: int = 768, ffn: int = 3072) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "q": nn.Linear(width, width),
                    "k": nn.Linear(width, width),
                    "v": nn.Linear(width, width),
                    "o": nn.Linear(width, width),
                    "ff1": nn.Linear(width, ffn),
                    "ff2": nn.Linear(ffn, width),
                }
            )
            for _ in range(blocks)
        )
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b["o"](b["q"](x) * b["k"](x).sigmoid() + b["v"](x))
            x = x + b["ff2"](self.act(b["ff1"](x)))
        return x


def _task(name: str, tokens: int, device: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, nn.Module]:
    if name == "resnet":
        return (
            SmallResNet(),
            torch.randn(64, 1, 28, 28, device=device),
            torch.randint(0, 10, (64,), device=device),
            nn.CrossEntropyLoss(),
        )
    x = torch.randn(tokens, 768, device=device)
    return BertShapedStack(), x, torch.randn(tokens, 768, device=device), nn.MSELoss()


def saved_for_backward_bytes(model: nn.Module, step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward, parameters excluded."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = step()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def measure(
    name: str, steps: int, warmup: int, tokens: int, device: str, phase: str = "ramp", compiled: bool = False
) -> dict:
    torch.manual_seed(0)
    base, x, y, loss_fn = _task(name, tokens, device)
    base = base.to(device)
    runs = {}
    for label in LABELS:
        model = _task(name, tokens, device)[0].to(device)
        model.load_state_dict(base.state_dict())
        pruner = None
        if label != "dense":
            total = steps + warmup + 1
            # "ramp": the sparsity grows every timed step; "after": it is at its final value throughout
            schedule = pdprune.Schedule(
                total_steps=total, warmup=0, ramp=1.0 if phase == "ramp" else 1 / total
            )
            method = {
                "gmp": GMP(refresh_every=100),
                "pdp": pdprune.PDP(),
                "pdp-tol": pdprune.PDP(threshold_tolerance=1e-2),
                "pdp-eager": pdprune.PDP(kernels="eager"),
            }[label]
            # settle=None: the soft-masked step is what PDP costs while it learns its masks; once
            # the masks have settled to 0/1 a step multiplies by a hard mask, like GMP's.
            pruner = pdprune.prepare(
                model, pdprune.PruneConfig(sparsity=0.9, schedule=schedule, method=method, settle=None)
            )
        # Compiled after prepare(), and with hook guards on: by default dynamo does not guard on
        # module hooks, so the three same-class models would share the first one's graph.
        run = torch.compile(model) if compiled else model
        runs[label] = (run, torch.optim.AdamW(model.parameters(), lr=1e-4), pruner)

    def one_step(label: str) -> float:
        model, optimizer, pruner = runs[label]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if pruner is not None:
            pruner.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000

    labels = list(runs)
    for _ in range(warmup):
        for label in labels:
            one_step(label)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(steps):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            times[label].append(one_step(label))
    saved = {}
    if not compiled:  # saved-tensor hooks see the eager graph; a compiled one saves what inductor chose
        for label in labels:
            model = runs[label][0]
            saved[label] = saved_for_backward_bytes(model, lambda model=model: loss_fn(model(x), y)) / 2**20
    memory = {}
    if device.startswith("cuda"):
        for label in labels:  # one step each from a reset peak, after the timed ones
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            one_step(label)
            memory[label] = torch.cuda.max_memory_allocated() / 2**20
    medians = {label: statistics.median(values) for label, values in times.items()}
    thresholds = {}
    for label in ("pdp", "pdp-tol", "pdp-eager"):
        states = runs[label][2].state.values()
        thresholds[label] = {
            "computed": sum(s.computed for s in states),
            "reused": sum(s.reused for s in states),
            "moved_by_counts": sum(s.searched for s in states),
            "max_reuse_deviation": max(s.max_deviation for s in states),
        }
    weights = sum(p.numel() for n, p in base.named_parameters() if n.endswith("weight") and p.dim() > 1)
    weight_mib = weights * 4 / 2**20
    return {
        "model": name,
        "prunable_weights": weights,
        "inputs": list(x.shape),
        "median_ms": medians,
        "ratio_to_dense": {label: medians[label] / medians["dense"] for label in labels},
        "overhead_ms_per_million_weights": {
            label: (medians[label] - medians["dense"]) / (weights / 1e6)
            for label in labels
            if label != "dense"
        },
        "peak_memory_mib": memory or None,
        "saved_for_backward_mib": saved or None,
        "extra_saved_in_weight_copies": (
            {label: (saved[label] - saved["dense"]) / weight_mib for label in labels if label != "dense"}
            if saved
            else None
        ),
        "thresholds": thresholds,
        "steps_timed": steps,
        "phase": phase,
        "compiled": compiled,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", choices=["resnet", "bert-stack"], default=["resnet", "bert-stack"]
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method (default 30)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--tokens",
        type=int,
        nargs="+",
        default=[512],
        help="tokens per step for bert-stack, one row each (default 512)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="run every model under torch.compile (inductor)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "step_cost")
    parser.add_argument("--tag", default=None)
    parser.add_argument(
        "--phase",
        choices=["ramp", "after"],
        default="ramp",
        help="time steps while the sparsity ramps (default) or after the ramp, at the final sparsity",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    ensure_writable_folder(args.out)
    tag = args.tag or (f"cpu-{os.cpu_count()}core" if args.device == "cpu" else args.device)
    tag += ("" if args.phase == "ramp" else "-after-ramp") + ("-compiled" if args.compile else "")
    if args.compile:
        torch._dynamo.config.skip_nnmodule_hook_guards = False
    started = time.time()
    rows = []
    for name in args.models:
        for tokens in args.tokens if name == "bert-stack" else [0]:
            row = measure(name, args.steps, args.warmup, tokens, args.device, args.phase, args.compile)
            rows.append(row)
            print(
                f"{name} {'x'.join(map(str, row['inputs']))}: "
                + ", ".join(
                    f"{k} {v:.1f} ms ({row['ratio_to_dense'][k]:.2f}x)" for k, v in row["median_ms"].items()
                ),
                flush=True,
            )
    payload = {
        "benchmark": "training step cost",
        **provenance("benchmarks.step_cost", argv),
        "machine": machine_info(),
        "device": args.device,
        "sparsity": 0.9,
        "compiled": args.compile,
        "note": (
            "Pruning in force while timing (warm-up 0, "
            + (
                "ramp over the whole run"
                if args.phase == "ramp"
                else "ramp done after the first step: final sparsity throughout"
            )
            + "). Medians of interleaved steps "
            "in one process; float32; AdamW"
            + ("; every model under torch.compile (inductor)" if args.compile else "; eager")
            + ". Saved for backward: tensors autograd keeps in one step beyond the parameters (eager "
            "only); peak memory on CUDA only."
        ),
        "rows": rows,
        "wall_seconds": time.time() - started,
    }
    stem = args.out / f"step_cost_{tag}"
    atomic_write_json(stem.with_suffix(".json"), payload)
    m = payload["machine"]
    lines = [
        f"# Training-step cost, dense vs PDP (default, tolerance 1e-2, eager) vs GMP at 90% ({args.device})",
        "",
        f"Command: `{payload['command']}`  ",
        f"Commit: {payload['commit']}  ",
        (
            f"Machine: {m['cpu']} ({m['torch_threads']} torch "
            f"threads){', ' + m['gpu'] if 'gpu' in m else ''}, torch "
            f"{m['torch']}. {payload['note']}"
        ),
        "",
        (
            "| model | prunable weights | inputs | dense ms | PDP ms (ratio) | PDP tolerance 1e-2 ms (ratio) "
            "| PDP eager ms (ratio) | GMP ms (ratio) | PDP tolerance 1e-2: thresholds selected / reused / "
            "moved by counts (largest deviation) "
            "| saved for backward MiB dense / PDP / GMP (PDP extra in weight copies) | peak MiB dense / PDP "
            "/ PDP tol / PDP eager / GMP |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem, saved, ms, ratio = (
            r["peak_memory_mib"],
            r["saved_for_backward_mib"],
            r["median_ms"],
            r["ratio_to_dense"],
        )
        saved_text = (
            f"{' / '.join(f'{saved[k]:.0f}' for k in ('dense', 'pdp', 'gmp'))} "
            f"({r['extra_saved_in_weight_copies']['pdp']:.2f})"
            if saved
            else "not measured (compiled)"
        )
        th = r["thresholds"]["pdp-tol"]
        lines.append(
            f"| {r['model']} | {r['prunable_weights']:,} | {'x'.join(map(str, r['inputs']))} | "
            f"{ms['dense']:.1f} | "
            + " | ".join(f"{ms[k]:.1f} ({ratio[k]:.2f}x)" for k in ("pdp", "pdp-tol", "pdp-eager", "gmp"))
            + f" | {th['computed']} / {th['reused']} / {th['moved_by_counts']} "
            f"({100 * th['max_reuse_deviation']:.2f}% of the kept count) | {saved_text} | "
            f"{' / '.join(f'{mem[k]:.0f}' for k in LABELS) if mem else 'not measured on CPU'} |"
        )
    lines += [
        "",
        (
            "Targets (issue: training cost): PDP step <= 1.15x dense on CPU, <= 1.10x on GPU, for the "
            "BERT-base-shaped "
            "stack; extra memory at most one float32 copy of the pruned weights."
        ),
    ]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

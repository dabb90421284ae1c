"""What fixing the per-layer budgets costs when pruning starts: peak memory and step time.

A 50M-weight MLP (Linear layers 2048-4096-4096-4096-2048, Adam, batch 64, 1 torch thread) trains
a few dense steps, then PDP starts pruning it towards 90% over a long ramp (1000 steps, of which
the first few run). The ``pruner.step()`` that ends warm-up fixes the budgets (a global magnitude
ranking, or ERK from shapes); the next step is the first with masks in force. Each variant runs
in its own process, so the peak resident memory (``ru_maxrss``) of one never counts against
another:

- ``dense``: no pruner; the reference peak and step time.
- ``pdp-global``, ``pdp-erk``: the library's PDP, global or ERK budgets. Its first masked step
  compiles the fused mask kernels once per process (``torch.compile``; a warm cache shortens it).
- ``pdp-global-eager``: ``PDP(kernels="eager")``, global budgets: the first masked step without
  that compilation.
- ``pdp-global-ranked``: global budgets by the full sort of every magnitude at once
  (``benchmarks.harness.reference.ranked_budgets``, what the library did before counting).

Each variant runs ``--repeats`` times, in rounds over the variants; the table gives medians.
Within a process, the peak before the step that ends warm-up is that process's dense training
peak; the peak after it includes fixing the budgets, and their ratio is the budgets' memory spike.
The first masked step's time is compared with the median of the later ones. Writes
budget_cost_<tag>.json and .md to benchmarks/results/budget_cost/.

    python -m benchmarks.budget_cost --tag cpu-2core
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

import pdprune
from benchmarks.harness.provenance import REPO, RESULTS, provenance
from pdprune.io import atomic_write_json, atomic_write_text
from pdprune.machine import machine_info

OUT = RESULTS / "budget_cost"
VARIANTS = ("dense", "pdp-global", "pdp-erk", "pdp-global-eager", "pdp-global-ranked")
WIDTHS = (2048, 4096, 4096, 4096, 2048)  # 50.3M weights
RAMP = 1000  # steps; only the first few run


def _model(widths: Sequence[int]) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(variant: str, warmup: int, pruning: int, widths: Sequence[int] = WIDTHS) -> dict:
    """One variant's run in this process: peaks and step times."""
    torch.set_num_threads(1)
    model = _model(widths)
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    pruner = None
    if variant != "dense":
        if variant == "pdp-global-ranked":
            from benchmarks.harness.reference import ranked_budgets
            from pdprune.engine import weights as engine_weights

            engine_weights.global_magnitude_budgets = lambda w, s, fixed=None, names=None, reduce=None: (
                ranked_budgets(w, s, fixed)
            )
        schedule = pdprune.Schedule(total_steps=warmup + RAMP, warmup=warmup, ramp=RAMP)
        budget = "erk" if variant == "pdp-erk" else "global"
        method = pdprune.PDP(kernels="eager") if variant == "pdp-global-eager" else pdprune.PDP()
        config = pdprune.PruneConfig(sparsity=0.9, budget=budget, schedule=schedule, method=method)
        pruner = pdprune.prepare(model, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, widths[0], generator=generator)
    y = torch.randn(64, widths[-1], generator=generator)
    seconds, peaks = [], []
    for _ in range(warmup + pruning):
        started = time.perf_counter()
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if pruner is not None:
            pruner.step()
        seconds.append(time.perf_counter() - started)
        peaks.append(_peak_mib())
    # Steps 0 .. warmup-2 are dense; step warmup-1 ends warm-up (its pruner.step() fixes the
    # budgets); steps from warmup on compute with masks.
    return {
        "variant": variant,
        "weights": weights,
        "dense_peak_mib": peaks[warmup - 2],
        "peak_after_budgets_mib": peaks[warmup - 1],
        "peak_mib": peaks[-1],
        "dense_step_seconds": statistics.median(seconds[1 : warmup - 1]),
        "budget_step_seconds": seconds[warmup - 1],
        "first_masked_step_seconds": seconds[warmup],
        "later_masked_step_seconds": statistics.median(seconds[warmup + 1 :]),
    }


def _medians(variant: str, repeats: list[dict]) -> dict:
    """Each measured quantity's median over the variant's processes (and the values, for the record)."""
    keys = [k for k, v in repeats[0].items() if isinstance(v, float)]
    return {
        "variant": variant,
        "weights": repeats[0]["weights"],
        **{k: statistics.median(r[k] for r in repeats) for k in keys},
        "repeats": repeats,
    }


def markdown(result: dict) -> str:
    machine = result["machine"]
    rows = result["runs"]
    dense = next(r for r in rows if r["variant"] == "dense")
    lines = [
        "# Fixing the budgets: peak memory and the first pruning steps",
        "",
        f"Command: `{result['command']}`  ",
        f"Commit: {result['commit']}  ",
        f"Machine: {machine['cpu']} (1 torch thread per run), torch {machine['torch']}, "
        f"Python {machine['python']}",
        "",
        f"{dense['weights'] / 1e6:.1f}M weights (Linear {'-'.join(map(str, result['widths']))}), "
        "Adam, batch 64, "
        f"{result['warmup']} steps of warm-up, then {result['pruning']} steps of a {RAMP}-step ramp to 90%; "
        f"each variant in its own process, {result['repeats']} processes each, medians. Peak resident "
        "memory in MiB: before the step that ends warm-up (the process's dense training peak), after "
        "it (budgets fixed), and overall, against the dense process. Step times in seconds.",
        "",
        "| variant | dense peak | after fixing budgets | x dense peak | overall | x dense process | "
        "dense step | budget step | first masked step | later masked, median | first / later |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first, later = r["first_masked_step_seconds"], r["later_masked_step_seconds"]
        cells = [
            r["variant"],
            f"{r['dense_peak_mib']:.0f}",
            f"{r['peak_after_budgets_mib']:.0f}",
            f"{r['peak_after_budgets_mib'] / r['dense_peak_mib']:.2f}",
            f"{r['peak_mib']:.0f}",
            f"{r['peak_mib'] / dense['peak_mib']:.2f}",
            f"{r['dense_step_seconds']:.2f}",
            f"{r['budget_step_seconds']:.2f}",
            f"{first:.2f}",
            f"{later:.2f}",
            f"{first / later:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.budget_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--warmup", type=int, default=5, help="warm-up steps (>= 3)")
    parser.add_argument("--pruning", type=int, default=6, help="masked steps that run (>= 2)")
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS), help="the MLP's layer widths")
    parser.add_argument("--repeats", type=int, default=3, help="processes per variant; medians reported")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 3 or args.pruning < 2:
        parser.error("--warmup needs 3 steps and --pruning 2 (medians leave out each phase's first)")
    if "dense" not in args.variants:
        parser.error("the table compares with the dense run: keep dense among --variants")
    if args.child:
        print(json.dumps(measure(args.child, args.warmup, args.pruning, args.widths)))
        return 0
    measured: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    for repeat in range(args.repeats):  # rounds over the variants, so a noisy spell hits them all
        for variant in args.variants:
            command = [sys.executable, "-m", "benchmarks.budget_cost", "--child", variant]
            command += ["--warmup", str(args.warmup), "--pruning", str(args.pruning), "--widths"]
            command += [str(w) for w in args.widths]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
            measured[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(
                f"round {repeat + 1}, {variant}: peak {measured[variant][-1]['peak_mib']:.0f} MiB", flush=True
            )
    runs = [_medians(variant, repeats) for variant, repeats in measured.items()]
    result = {
        "benchmark": "budget_cost",
        **provenance("benchmarks.budget_cost", argv),
        "machine": machine_info(),
        "warmup": args.warmup,
        "pruning": args.pruning,
        "repeats": args.repeats,
        "widths": args.widths,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"budget_cost_{args.tag}"
    atomic_write_json(stem.with_name(stem.name + ".json"), result)
    atomic_write_text(stem.with_name(stem.name + ".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

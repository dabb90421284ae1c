"""Step time of dense vs PDP training under DDP and FSDP2 at 1, 2 and 4 ranks, and what pdprune
itself communicates.

Each rank trains an MLP (Linear layers ``--widths``, Adam, its own batch of ``--batch``: weak
scaling, as data parallelism runs) with gloo on CPU, one torch thread per rank. In every round
the ranks train a dense model, then the same model under PDP (global budgets, 90%, a long ramp
so that thresholds move every step), each for ``--warm`` steps that are not timed (the budgets
are fixed and the mask kernels compiled there) and ``--steps`` that are. A step is timed on each
rank and counted at the slowest rank's time; the table gives medians over all rounds' steps.

pdprune's own collectives are counted by wrapping ``torch.distributed``'s collectives (and the
store meetings that guard them) while ``pruner.step()`` runs: during the timed steps, and at the
step that ends warm-up and fixes the global budgets; and in ``finalize()``, which hardens the
masks after the timed steps. FSDP2's and DDP's own traffic (gathering
weights, averaging gradients) is the same for dense and PDP and not counted. Writes
scale_step_<tag>.json and .md to benchmarks/results/scale/.

    python -m benchmarks.scale_step --tag cpu-2core
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import pdprune
from benchmarks.harness.provenance import REPO, RESULTS, provenance
from pdprune.io import atomic_write_json, atomic_write_text
from pdprune.machine import machine_info

OUT = RESULTS / "scale"
WIDTHS = (1024, 2048, 2048, 1024)  # 8.4M weights
WRAPS = ("ddp", "fsdp2")
_COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor")


def _model(widths: Sequence[int]) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class Traffic:
    """Counts the collectives (calls, bytes, seconds) and store meetings made while ``counting``."""

    def __init__(self) -> None:
        self.calls = 0
        self.bytes = 0
        self.seconds = 0.0
        self.active = False
        self._originals = {name: getattr(dist, name) for name in _COLLECTIVES}
        for name, original in self._originals.items():
            setattr(dist, name, self._wrap(original))

    def _wrap(self, original):
        def counted(tensor, *args, **kwargs):
            if not self.active:
                return original(tensor, *args, **kwargs)
            started = time.perf_counter()
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1
                if isinstance(tensor, torch.Tensor):
                    self.bytes += tensor.numel() * tensor.element_size()

        return counted

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def take(self) -> dict:
        """What was counted since the last take, and reset."""
        from pdprune.engine import collective

        taken = {"calls": self.calls, "bytes": self.bytes, "seconds": self.seconds}
        taken["meetings"] = collective._meetings - getattr(self, "_meetings", 0)
        self._meetings = collective._meetings
        self.calls, self.bytes, self.seconds = 0, 0, 0.0
        return taken

    def restore(self) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)


def _train(variant: str, wrap: str, args: argparse.Namespace, rank: int, traffic: Traffic) -> dict:
    """One variant's run on this rank: per-step seconds of the timed steps, pdprune's traffic."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    model = _model(args.widths)
    pruner = None
    if variant == "pdp":
        warmup = args.warm // 2
        schedule = pdprune.Schedule(total_steps=100_000, warmup=warmup, ramp=50_000)
        pruner = pdprune.prepare(model, pdprune.PruneConfig(sparsity=0.9, budget="global", schedule=schedule))
    if wrap == "ddp":
        run: nn.Module = DistributedDataParallel(model)
    else:
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        run = model
    optimizer = torch.optim.Adam(run.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, args.widths[0], generator=generator)
    y = torch.randn(args.batch, args.widths[-1], generator=generator)
    seconds, in_pruner, budget_traffic = [], [], None
    traffic.take()
    for step in range(args.warm + args.steps):
        dist.barrier()
        started = time.perf_counter()
        loss = nn.functional.mse_loss(run(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if pruner is not None:
            pruner_started = time.perf_counter()
            with traffic.counting():
                pruner.step()
            pruner_seconds = time.perf_counter() - pruner_started
        elapsed = time.perf_counter() - started
        if pruner is not None and step == args.warm // 2 - 1:  # the step that fixes the budgets
            budget_traffic = traffic.take()
        if step == args.warm - 1:
            traffic.take()
        if step >= args.warm:
            seconds.append(elapsed)
            in_pruner.append(pruner_seconds if pruner is not None else 0.0)
    timed_traffic = traffic.take()
    finalize_traffic = None
    if pruner is not None:
        with warnings.catch_warnings(), traffic.counting():
            warnings.simplefilter("ignore")  # hardening mid-ramp, on purpose
            pruner.finalize()
        finalize_traffic = traffic.take()
    slowest = torch.tensor(seconds, dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return {
        "step_seconds": slowest.tolist(),
        "pruner_step_seconds": in_pruner,
        "traffic": timed_traffic,
        "budget_traffic": budget_traffic,
        "finalize_traffic": finalize_traffic,
    }


def _rank(rank: int, world: int, store: str, wrap: str, args: argparse.Namespace, out: str) -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    faulthandler.enable()  # a rank that dies of a signal prints where
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    traffic = Traffic()
    try:
        runs: dict[str, list[dict]] = {"dense": [], "pdp": []}
        for _ in range(args.rounds):  # alternating, so a noisy spell hits both
            for variant in runs:
                runs[variant].append(_train(variant, wrap, args, rank, traffic))
        if rank == 0:
            Path(out).write_text(json.dumps(runs))
    finally:
        traffic.restore()
        dist.destroy_process_group()
    # Skip the interpreter's teardown once the results are written: gloo's worker threads can
    # still be releasing the last collective's tensors while Python finalizes, and a thread that
    # needs the GIL then aborts the process (SIGABRT). A failing rank raised above instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def measure(wrap: str, world: int, args: argparse.Namespace) -> dict:
    """Spawn ``world`` ranks that train under ``wrap``; medians of what rank 0 recorded."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rank0.json")
        mp.spawn(_rank, args=(world, os.path.join(folder, "store"), wrap, args, out), nprocs=world, join=True)
        runs = json.loads(Path(out).read_text())
    dense = [s for run in runs["dense"] for s in run["step_seconds"]]
    pdp = [s for run in runs["pdp"] for s in run["step_seconds"]]
    in_pruner = [s for run in runs["pdp"] for s in run["pruner_step_seconds"]]
    timed_steps = args.steps * args.rounds
    traffic = {
        k: sum(run["traffic"][k] for run in runs["pdp"]) / timed_steps
        for k in ("calls", "bytes", "seconds", "meetings")
    }
    budget = runs["pdp"][0]["budget_traffic"]
    return {
        "wrap": wrap,
        "ranks": world,
        "dense_step_seconds": statistics.median(dense),
        "pdp_step_seconds": statistics.median(pdp),
        "pruner_step_seconds": statistics.median(in_pruner),
        "pdprune_traffic_per_step": traffic,
        "budget_step_traffic": budget,
        "finalize_traffic": runs["pdp"][0]["finalize_traffic"],
        "steps": {"dense": dense, "pdp": pdp},
    }


def markdown(result: dict) -> str:
    machine = result["machine"]
    weights = sum(a * b for a, b in itertools.pairwise(result["widths"]))
    lines = [
        "# Training at scale: dense vs PDP step time, and what pdprune communicates",
        "",
        f"Command: `{result['command']}`  ",
        f"Commit: {result['commit']}  ",
        f"Machine: {machine['cpu']}, {machine['cpu_count']} cores; gloo on CPU, 1 torch thread per rank; "
        f"torch {machine['torch']}, Python {machine['python']}",
        "",
        f"MLP {'-'.join(map(str, result['widths']))} ({weights / 1e6:.1f}M weights), Adam, batch "
        f"{result['batch']} per rank (each rank its own data). PDP: global budgets, 90%, in the ramp "
        f"(thresholds move every step). {result['rounds']} rounds of {result['steps']} timed steps per "
        "variant, dense and PDP alternating; a step counts at its slowest rank; medians in ms. "
        "pdprune's traffic: the collectives made inside `pruner.step()`, per timed step, and at the "
        "one step that fixes the global budgets (calls, KiB, ms, and the store meetings that guard "
        "them), and in `finalize()`.",
        "",
        "| wrap | ranks | dense step | PDP step | PDP / dense | in pruner.step() | pdprune collectives "
        "per step | their time, % of PDP step | budget step: calls, KiB, ms, meetings "
        "| finalize(): calls, KiB, ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        per_step, budget = r["pdprune_traffic_per_step"], r["budget_step_traffic"] or {}
        final = r["finalize_traffic"]
        cells = [
            r["wrap"],
            str(r["ranks"]),
            f"{r['dense_step_seconds'] * 1e3:.1f}",
            f"{r['pdp_step_seconds'] * 1e3:.1f}",
            f"{r['pdp_step_seconds'] / r['dense_step_seconds']:.2f}",
            f"{r['pruner_step_seconds'] * 1e3:.2f}",
            f"{per_step['calls']:.2f} calls, {per_step['bytes'] / 1024:.2f} KiB",
            f"{100 * per_step['seconds'] / r['pdp_step_seconds']:.2f}%",
            f"{budget.get('calls', 0)}, {budget.get('bytes', 0) / 1024:.0f}, "
            f"{budget.get('seconds', 0) * 1e3:.1f}, {budget.get('meetings', 0)}",
            f"{final['calls']}, {final['bytes'] / 1024:.0f}, {final['seconds'] * 1e3:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale_step", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--wraps", nargs="+", choices=WRAPS, default=list(WRAPS))
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS), help="the MLP's layer widths")
    parser.add_argument("--batch", type=int, default=64, help="examples per rank and step")
    parser.add_argument("--warm", type=int, default=6, help="untimed steps per run (budgets fixed halfway)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="dense/PDP runs per rank count")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.warm < 4:
        parser.error("--warm needs 4 steps: warm-up, the budget step, and the first masked steps")
    runs = []
    for wrap in args.wraps:
        for world in args.ranks:
            runs.append(measure(wrap, world, args))
            r = runs[-1]
            print(
                f"{wrap}, {world} rank(s): dense {r['dense_step_seconds'] * 1e3:.1f} ms, "
                f"PDP {r['pdp_step_seconds'] * 1e3:.1f} ms",
                flush=True,
            )
    result = {
        "benchmark": "scale_step",
        **provenance("benchmarks.scale_step", argv),
        "machine": machine_info(),
        "widths": args.widths,
        "batch": args.batch,
        "warm": args.warm,
        "steps": args.steps,
        "rounds": args.rounds,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"scale_step_{args.tag}"
    atomic_write_json(stem.with_name(stem.name + ".json"), result)
    atomic_write_text(stem.with_name(stem.name + ".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

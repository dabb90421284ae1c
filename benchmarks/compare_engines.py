"""Does a change to the engine change what training computes, or what a step costs?

Runs the same short trainings (every method and pattern) with this checkout's pdprune and with
another checkout's, in separate processes, then compares the final weights bit for bit and the
median step time of each, interleaved so machine noise hits both alike.

    git worktree add /tmp/before <commit>
    python -m benchmarks.compare_engines --other /tmp/before/src --tag cpu-2core-vs-<commit>

Writes benchmarks/results/engine/compare_engines_<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness.provenance import REPO, RESULTS, provenance
from pdprune.io import atomic_write_json, atomic_write_text
from pdprune.machine import machine_info

RUNS = [
    "pdp-global",
    "pdp-tolerance",
    "pdp-erk",
    "gmp",
    "oneshot",
    "pdp-2:4",
    "srste-2:4",
    "pdp-channel",
    "l1-channel",
]

# Run in a child process with one pdprune source tree first on sys.path; it must only use the
# public API that both trees share.
CHILD = r"""
import json, sys, time, statistics, torch
from torch import nn
sys.path.insert(0, sys.argv[1])
import pdprune
from pdprune.baselines import GMP, OneShot, SRSTE, L1Channel
torch.set_num_threads(int(sys.argv[4]))

def mlp(width):
    torch.manual_seed(0)
    layers = [nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4)]
    return nn.Sequential(*layers)

def cnn():
    torch.manual_seed(0)
    block = lambda c: [nn.Conv2d(c, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    return nn.Sequential(*block(3), *block(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

SETTINGS = {
    "pdp-global": dict(sparsity=0.9),
    "pdp-tolerance": dict(sparsity=0.9, method=pdprune.PDP(threshold_tolerance=0.01)),
    "pdp-erk": dict(sparsity=0.8, budget="erk"), "gmp": dict(sparsity=0.9, method=GMP(refresh_every=5)),
    "oneshot": dict(sparsity=0.9, method=OneShot()), "pdp-2:4": dict(pattern="2:4"),
    "srste-2:4": dict(pattern="2:4", method=SRSTE()), "pdp-channel": dict(sparsity=0.5, pattern="channel"),
    "l1-channel": dict(sparsity=0.5, pattern="channel", method=L1Channel()),
}
name, steps, width = sys.argv[2], int(sys.argv[3]), int(sys.argv[5])
channel = "channel" in name
model = cnn() if channel else mlp(width)
xs = torch.randn(64, 3, 8, 8) if channel else torch.randn(64, 16)
config = pdprune.PruneConfig(schedule=pdprune.Schedule(steps, warmup=0.1, ramp=0.5), **SETTINGS[name])
pruner = pdprune.prepare(model, config, **({"example_inputs": xs[:2]} if channel else {}))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
g = torch.Generator().manual_seed(1)
times = []
for step in range(steps):
    x = xs[torch.randint(0, 64, (16,), generator=g)]
    y = x.flatten(1)[:, :4].argmax(1)
    start = time.perf_counter()
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(); loss.backward(); optimizer.step(); pruner.step()
    times.append(time.perf_counter() - start)
import warnings
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pruner.finalize()
weights = {k: v.flatten().tolist() for k, v in model.state_dict().items() if v.is_floating_point()}
print(json.dumps({"median_ms": 1000 * statistics.median(times[steps // 2:]), "weights": weights}))
"""


def _run(src: str, name: str, steps: int, threads: int, width: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(CHILD)
    done = subprocess.run(
        [sys.executable, script.name, src, name, str(steps), str(threads), str(width)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tempfile.gettempdir(),
    )
    Path(script.name).unlink()
    if done.returncode != 0:
        raise RuntimeError(f"{name} with {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="the src/ folder of the checkout to compare with")
    parser.add_argument("--tag", required=True, help="names the result files, e.g. cpu-2core-vs-ce1f260")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per tree and setting")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=256, help="hidden width of the MLP runs")
    args = parser.parse_args(argv)
    here, other = str(REPO / "src"), str(Path(args.other).resolve())
    rows = []
    for name in RUNS:
        times: dict[str, list[float]] = {"this": [], "other": []}
        weights: dict[str, list[object]] = {"this": [], "other": []}
        for _ in range(args.repeats):
            for label, src in (("other", other), ("this", here)):
                result = _run(src, name, args.steps, args.threads, args.width)
                times[label].append(result["median_ms"])
                weights[label].append(result["weights"])
        # Every run of either tree against the first: a difference between runs of one tree is
        # the machine's nondeterminism, not the change, and is reported as such.
        runs_agree = {label: all(w == ws[0] for w in ws) for label, ws in weights.items()}
        identical = sum(w == weights["other"][0] for w in weights["this"])
        this_ms, other_ms = statistics.median(times["this"]), statistics.median(times["other"])
        rows.append(
            {
                "run": name,
                "identical_runs": identical,
                "runs": args.repeats,
                "repeatable": runs_agree,
                "this_ms": this_ms,
                "other_ms": other_ms,
                "ratio": this_ms / other_ms,
                "this_runs_ms": times["this"],
                "other_runs_ms": times["other"],
            }
        )
        print(
            f"{name:14s} weights identical in {identical}/{args.repeats} runs (repeatable here "
            f"{runs_agree['this']}, there {runs_agree['other']}); step {this_ms:.2f} ms here, "
            f"{other_ms:.2f} ms there ({this_ms / other_ms:.2f}x)"
        )
    info = {
        **provenance("benchmarks.compare_engines", sys.argv[1:] if argv is None else argv),
        "other_src": args.other,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
        "machine": machine_info(),
        "rows": rows,
    }
    folder = RESULTS / "engine"
    atomic_write_json(folder / f"compare_engines_{args.tag}.json", info)
    lines = [
        f"# Engine comparison: {args.tag}",
        "",
        f"Command: `{info['command']}`",
        f"Commit: {info['commit']}",
        f"Compared with: {args.other}",
        f"Machine: {info['machine']}",
        "",
        f"{args.steps} training steps per run, median step time over the second half, median of "
        f"{args.repeats} interleaved runs per tree.",
        "",
        "Each run is a fresh process; the range of the runs' own medians shows how much a process's "
        "timing varies on this machine.",
        "",
        "| run | final weights identical to the other tree's | step here (ms) [range] | "
        "step there (ms) [range] | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        here = f"{r['this_ms']:.2f} [{min(r['this_runs_ms']):.2f}-{max(r['this_runs_ms']):.2f}]"
        there = f"{r['other_ms']:.2f} [{min(r['other_runs_ms']):.2f}-{max(r['other_runs_ms']):.2f}]"
        same = f"{r['identical_runs']} of {r['runs']} runs"
        lines.append(f"| {r['run']} | {same} | {here} | {there} | {r['ratio']:.2f} |")
    ratios = [r["ratio"] for r in rows]
    lines += ["", f"Median ratio of step times (here / there): {statistics.median(ratios):.2f}."]
    atomic_write_text(folder / f"compare_engines_{args.tag}.md", "\n".join(lines) + "\n")
    return 0 if all(r["identical_runs"] == r["runs"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

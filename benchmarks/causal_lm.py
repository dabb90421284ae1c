"""Causal language modelling on real text: a small GPT-2-shaped model is trained dense on Rotten
Tomatoes critic snippets (tokenised with MiniLM's WordPiece vocabulary), then pruned while it
fine-tunes: 50% unstructured (PDP, GMP, one-shot) and 2:4 (PDP, one-shot, SR-STE), every method
with the same steps, optimizer, schedule, data order and seeds. The metric is perplexity on the
snippets of movies held out of training. Writes causal_lm_<tag>.json and .md.

    python -m benchmarks.causal_lm --seeds 0 1 2 --tag cpu-2core
    python -m benchmarks.causal_lm --quick          # a smoke test of the pipeline, under a minute
    python -m benchmarks.causal_lm markdown FILE.json   # rewrite FILE.md from the result
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import pdprune
from benchmarks.harness.data.rotten_tomatoes import load_rotten_tomatoes
from benchmarks.harness.models.minilm import minilm_path
from benchmarks.harness.provenance import provenance
from pdprune.baselines import GMP, SRSTE, OneShot
from pdprune.io import atomic_write_json, atomic_write_text
from pdprune.machine import machine_info

RESULTS = Path(__file__).parent / "results" / "causal_lm"

#: Pattern -> the methods compared on it (GMP's ramp is a sparsity ramp, which N:M has not).
METHODS: dict[str, dict[str, Any]] = {
    "50%": {"pdp": pdprune.PDP(), "gmp": GMP(), "oneshot": OneShot()},
    "2:4": {"pdp": pdprune.PDP(), "oneshot": OneShot(), "srste": SRSTE()},
}


@dataclass(frozen=True)
class Setup:
    block: int = 64
    vocab: int = 4096
    width: int = 128
    layers: int = 2
    heads: int = 4
    batch: int = 16
    dense_steps: int = 1000
    dense_lr: float = 1e-3
    prune_steps: int = 400
    prune_lr: float = 3e-4
    train_limit: int | None = None  # texts, for the quick mode

    def describe(self) -> str:
        return (
            f"GPT-2 shape: {self.layers} layers, width {self.width}, {self.heads} heads, "
            f"context {self.block}, vocabulary {self.vocab}, embeddings tied to the LM head "
            f"(left dense: exclude=['lm_head']); dense training {self.dense_steps} "
            f"steps at lr {self.dense_lr:g}, then {self.prune_steps} pruning steps at lr {self.prune_lr:g} "
            f"(AdamW, batch {self.batch}); schedule for every method: warm-up 10%, cubic ramp over 50%"
        )


@dataclass(frozen=True)
class Text:
    train: torch.Tensor  # (blocks, block) token ids in a compact vocabulary
    test: torch.Tensor
    vocab: int


def load_text(setup: Setup) -> Text:
    """Snippets joined by [SEP] into one stream per split, cut into blocks. The vocabulary is the
    ``setup.vocab`` most frequent WordPiece tokens of the training text; any other token becomes
    [UNK] (which keeps the softmax small enough for CPU runs)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    split = load_rotten_tomatoes()
    train_texts = split.train_texts[: setup.train_limit] if setup.train_limit else split.train_texts
    test_texts = split.test_texts[: setup.train_limit // 4] if setup.train_limit else split.test_texts

    def stream(texts: list[str]) -> list[int]:
        ids: list[int] = []
        for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            ids += [*encoded, tokenizer.sep_token_id]
        return ids

    train, test = stream(train_texts), stream(test_texts)
    frequent = [
        token for token, _ in Counter(train).most_common(setup.vocab - 1) if token != tokenizer.unk_token_id
    ]
    known = sorted({*frequent[: setup.vocab - 1], tokenizer.unk_token_id})
    compact = {token: i for i, token in enumerate(known)}
    unknown = compact[tokenizer.unk_token_id]

    def blocks(ids: list[int]) -> torch.Tensor:
        mapped = torch.tensor([compact.get(t, unknown) for t in ids])
        usable = len(mapped) // setup.block * setup.block
        return mapped[:usable].view(-1, setup.block)

    return Text(blocks(train), blocks(test), len(known))


def build_model(setup: Setup, vocab: int, seed: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=setup.block,
        n_embd=setup.width,
        n_layer=setup.layers,
        n_head=setup.heads,
        n_inner=4 * setup.width,
    )
    return GPT2LMHeadModel(config)


def train(
    model: torch.nn.Module,
    blocks: torch.Tensor,
    steps: int,
    lr: float,
    seed: int,
    batch: int,
    pruner: pdprune.Pruner | None = None,
) -> None:
    """AdamW for ``steps`` batches drawn in a seeded order (the same for every method)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    order = torch.empty(0, dtype=torch.long)
    model.train()
    for _ in range(steps):
        if len(order) < batch:
            order = torch.randperm(len(blocks), generator=generator)
        ids, order = blocks[order[:batch]], order[batch:]
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if pruner is not None:
            pruner.step()


@torch.no_grad()
def perplexity(model: torch.nn.Module, blocks: torch.Tensor, batch: int = 64) -> float:
    """exp of the mean next-token loss over every held-out block."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch):
        ids = blocks[start : start + batch]
        loss = model(input_ids=ids, labels=ids).loss
        tokens = ids.shape[0] * (ids.shape[1] - 1)
        total, count = total + float(loss) * tokens, count + tokens
    return math.exp(total / count)


def prune_config(pattern: str, method: Any, steps: int) -> pdprune.PruneConfig:
    schedule = pdprune.Schedule(total_steps=steps, warmup=0.1, ramp=0.5, shape="cubic")
    common = {"method": method, "schedule": schedule, "exclude": [r"^lm_head$"]}
    if pattern == "2:4":
        return pdprune.PruneConfig(pattern="2:4", **common)
    return pdprune.PruneConfig(sparsity=0.5, budget="uniform", **common)


def run(setup: Setup, seeds: Sequence[int], log: Any = print) -> list[dict[str, Any]]:
    text = load_text(setup)
    log(
        f"{len(text.train)} training / {len(text.test)} held-out blocks of {setup.block}; "
        f"vocabulary {text.vocab}"
    )
    rows = []
    for seed in seeds:
        dense = build_model(setup, text.vocab, seed)
        started = time.perf_counter()
        train(dense, text.train, setup.dense_steps, setup.dense_lr, seed, setup.batch)
        rows.append(_row(seed, "dense", "pretrained", perplexity(dense, text.test), started))
        log(_line(rows[-1]))
        continued = copy.deepcopy(dense)
        started = time.perf_counter()
        train(continued, text.train, setup.prune_steps, setup.prune_lr, seed + 1000, setup.batch)
        rows.append(_row(seed, "dense", "dense", perplexity(continued, text.test), started))
        log(_line(rows[-1]))
        for pattern, methods in METHODS.items():
            for name, method in methods.items():
                model = copy.deepcopy(dense)
                pruner = pdprune.prepare(model, prune_config(pattern, method, setup.prune_steps))
                started = time.perf_counter()
                train(model, text.train, setup.prune_steps, setup.prune_lr, seed + 1000, setup.batch, pruner)
                report = pruner.finalize()
                row = _row(seed, pattern, name, perplexity(model, text.test), started)
                row["sparsity"] = report.achieved_sparsity
                rows.append(row)
                log(_line(row))
    return rows


def _row(seed: int, pattern: str, method: str, value: float, started: float) -> dict[str, Any]:
    return {
        "seed": seed,
        "pattern": pattern,
        "method": method,
        "perplexity": value,
        "seconds": time.perf_counter() - started,
    }


def _line(row: dict[str, Any]) -> str:
    return f"seed {row['seed']} {row['pattern']:>10} {row['method']:>8}: perplexity {row['perplexity']:.2f}"


def cells(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Pattern -> method -> mean, sd and worst (highest) perplexity over seeds."""
    grouped: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        grouped.setdefault(row["pattern"], {}).setdefault(row["method"], []).append(row["perplexity"])
    return {
        pattern: {
            method: {
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "worst": max(values),
                "seeds": len(values),
            }
            for method, values in methods.items()
        }
        for pattern, methods in grouped.items()
    }


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"# Causal LM: perplexity after pruning ({result['tag']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Commit: {result['commit']}  ",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('torch_threads', '?')} threads  ",
        f"Setup: {result['setup_text']}",
        "",
        "Held-out perplexity (lower is better): mean ± sd over seeds, and the worst (highest) seed.",
        "",
        "| pattern | method | perplexity | worst | seeds |",
        "|---|---|---|---|---|",
    ]
    for pattern, methods in result["cells"].items():
        for method, cell in methods.items():
            lines.append(
                f"| {pattern} | {method} | {cell['mean']:.2f} ± {cell['sd']:.2f} | {cell['worst']:.2f} "
                f"| {cell['seeds']} |"
            )
    seeds = sorted({row["seed"] for row in result["rows"]})
    lines += ["", "Per seed:", "", "| pattern | method | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
    lines.append("|---|---|" + "---|" * len(seeds))
    by_run = {(r["pattern"], r["method"], r["seed"]): r["perplexity"] for r in result["rows"]}
    for pattern, methods in result["cells"].items():
        for method in methods:
            values = " | ".join(f"{by_run[(pattern, method, s)]:.2f}" for s in seeds)
            lines.append(f"| {pattern} | {method} | {values} |")
    lines += [
        "",
        "`dense / pretrained`: the model pruning starts from; "
        "`dense / dense`: it trained on for the same steps.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["markdown"]:  # rewrite a result's .md from its .json (e.g. after a format change)
        for name in argv[1:]:
            path = Path(name)
            atomic_write_text(path.with_suffix(".md"), markdown(json.loads(path.read_text())))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.causal_lm", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny data and steps: a smoke test")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    setup = Setup(dense_steps=20, prune_steps=20, batch=8, train_limit=400) if args.quick else Setup()
    rows = run(setup, args.seeds)
    result = {
        "benchmark": "causal_lm",
        "tag": args.tag,
        **provenance("benchmarks.causal_lm", argv),
        "machine": machine_info(),
        "setup": asdict(setup),
        "setup_text": setup.describe(),
        "rows": rows,
        "cells": cells(rows),
    }
    stem = args.out / f"causal_lm_{args.tag}"
    atomic_write_json(stem.with_name(stem.name + ".json"), result)
    atomic_write_text(stem.with_name(stem.name + ".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

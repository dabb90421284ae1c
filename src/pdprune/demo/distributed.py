"""The demo's CNN pruned under torch.distributed: DDP or FSDP2, on as many ranks as torchrun starts.

    torchrun --nproc_per_node 2 -m pdprune.demo.distributed --wrap fsdp2 --pattern 2:4

Every rank builds the same model, ``pdprune.prepare`` takes it before it is wrapped (every
pattern allows that order), and each global batch of 64 is split across the ranks, so the
ranks together see the data one process would. Rank 0 prints the report and the test
accuracy, and with ``--save`` writes the pruned weights as a compressed checkpoint.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import pdprune
from pdprune.demo.data import DATASETS, load_dataset
from pdprune.demo.run import build_model, demo_target, target_config
from pdprune.demo.train import evaluate

__all__ = ["main"]

WRAPS = ("ddp", "fsdp2")


def _wrap(model: nn.Module, wrap: str) -> nn.Module:
    """DDP around the model, or FSDP2 over its two halves and the whole (each channel group of
    the CNN lies inside one half, as channel pruning under FSDP2 needs)."""
    if wrap == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    fully_shard(model.features)
    fully_shard(model.classifier)
    fully_shard(model)
    return model


def _full_state(model: nn.Module, wrap: str) -> dict[str, torch.Tensor]:
    """The whole weights on rank 0 (collective under FSDP2: every rank calls it)."""
    if wrap == "ddp":
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m pdprune.demo.distributed")
    parser.add_argument("--wrap", choices=WRAPS, default="fsdp2")
    parser.add_argument("--pattern", default="unstructured", help='"unstructured", "2:4", "channel", ...')
    parser.add_argument("--sparsity", type=float, default=None, help="default 0.9 (0.5 of the channels)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, default=None, help="compressed checkpoint of the pruned weights")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        parser.error("run it under torchrun, e.g. torchrun --nproc_per_node 2 -m pdprune.demo.distributed")
    target = demo_target(args.pattern, args.sparsity)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else None
        if device is not None:
            torch.cuda.set_device(device)
        data = load_dataset(args.dataset)
        batch = 64
        if batch % world:
            parser.error(f"{world} ranks do not split a batch of {batch} evenly; use 1, 2, 4, 8, ... ranks")
        steps = math.ceil(len(data.x_train) / batch) * args.epochs
        model = build_model(data.image_shape, data.num_classes, args.seed)
        if device is not None:
            model.to(device)
        schedule = pdprune.Schedule(total_steps=steps, warmup=0.1, ramp=0.2 if target.channels else 0.5)
        example = None
        if target.channels:  # channel pruning traces the model on one batch
            example = data.x_train[:2] if device is None else data.x_train[:2].to(device)
        pruner = pdprune.prepare(model, target_config(target, None, schedule), example_inputs=example)
        run = _wrap(model, args.wrap)
        optimizer = torch.optim.Adam(run.parameters(), lr=2e-3)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        generator = torch.Generator().manual_seed(args.seed)
        loss_fn = nn.CrossEntropyLoss()
        started = time.perf_counter()
        for _ in range(args.epochs):
            order = torch.randperm(len(data.x_train), generator=generator)
            for start in range(0, len(order), batch):
                mine = order[start : start + batch][rank::world]  # this rank's share of the batch
                x, y = data.x_train[mine], data.y_train[mine]
                if device is not None:
                    x, y = x.to(device), y.to(device)
                loss = loss_fn(run(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                pruner.step()  # on every rank
        seconds = time.perf_counter() - started
        report = pruner.finalize()  # on every rank
        x_test, y_test = data.x_test, data.y_test
        if device is not None:
            x_test, y_test = x_test.to(device), y_test.to(device)
        accuracy = evaluate(run, x_test, y_test)  # every rank: FSDP2 gathers weights in forward
        state = _full_state(model, args.wrap)
        if rank == 0:
            print(
                f"pdprune on {world} rank(s) ({args.wrap}, {backend}): SmallCNN on {args.dataset}, "
                f"{target.text}, {args.epochs} epochs in {seconds:.0f} s"
            )
            print(report.to_text())
            print(f"test accuracy {accuracy:.2%}")
            if args.save is not None:
                written = pdprune.export.save_sparse(state, args.save)
                print(f"saved {written}")
        return 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

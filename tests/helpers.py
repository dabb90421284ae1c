"""Small models and a deterministic training loop shared by the tests."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
from collections.abc import Iterator
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

import pdprune


class ZooNet(nn.Module):
    """One of every supported layer kind: conv 1d/2d/3d (grouped, depthwise), transposed, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.c1g = nn.Conv1d(8, 8, 3, padding=1, groups=2)
        self.c2 = nn.Conv2d(4, 8, 3, padding=1)
        self.c2dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.t2 = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.c3 = nn.Conv3d(2, 4, 3, padding=1)
        self.t1 = nn.ConvTranspose1d(8, 4, 3, padding=1)
        self.head = nn.Linear(4 * 5 + 4 * 4 * 4 + 4 * 2 * 2 * 2, 10)

    def forward(self, x1, x2, x3):
        a = self.t1(self.c1g(self.c1(x1))).flatten(1)
        b = self.t2(self.c2dw(self.c2(x2))).flatten(1)
        c = self.c3(x3).flatten(1)
        return self.head(torch.cat([a, b, c], 1))


def zoo_inputs(batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, 5, generator=g),
        torch.randn(batch, 4, 2, 2, generator=g),
        torch.randn(batch, 2, 2, 2, 2, generator=g),
    )


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def batch(step: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic batch for ``step``: data order does not depend on any global RNG."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(size, 16, generator=g)
    return x, (x[:, :4] * x[:, 4:8]).argmax(1)


def config(total: int = 60, sparsity: float = 0.9, **kwargs) -> pdprune.PruneConfig:
    schedule = pdprune.Schedule(
        total_steps=total, warmup=kwargs.pop("warmup", 10), ramp=kwargs.pop("ramp", 30)
    )
    return pdprune.PruneConfig(sparsity=sparsity, schedule=schedule, **kwargs)


def train_steps(model, pruner, optimizer, start: int, stop: int) -> None:
    for step in range(start, stop):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()


def run_as_ranks(world: int, work):
    """``work(rank, reduce)`` on ``world`` threads at once, ``reduce(tensor, op)`` combining the
    threads' tensors as an all-reduce would ("sum" or "max"); the list of their results. Stands in
    for sharded collectives in tests of the pure selection maths."""
    import threading

    barrier = threading.Barrier(world)
    posted: list[torch.Tensor | None] = [None] * world
    combined: list[torch.Tensor] = []
    results: list = [None] * world
    errors: list[BaseException] = []

    def reduce_on(rank: int):
        def reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
            posted[rank] = tensor.clone()
            barrier.wait()
            if rank == 0:
                parts = torch.stack(posted)  # type: ignore[arg-type]
                combined.append(parts.sum(0) if op == "sum" else parts.max(0).values)
            barrier.wait()
            return combined[-1].clone()

        return reduce

    def main(rank: int) -> None:
        try:
            results[rank] = work(rank, reduce_on(rank))
        except BaseException as error:  # surfaced below, after every thread ended
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=main, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Compute with one torch thread, as the spawned ranks do: a convolution's float sums can
    change with the thread count, and results across processes are compared bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def start_rank(rank: int, world: int, store_file: str) -> None:
    """Join a spawned rank to a gloo group: one torch thread, and a Python stack printed should
    the process die of a signal, so a crash in CI says where it happened."""
    faulthandler.enable()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)


def exit_rank() -> NoReturn:
    """End a spawned rank whose work succeeded and whose process group is destroyed, without the
    interpreter's teardown. Gloo's worker threads can still be releasing the last collective's
    tensors while Python finalizes; a thread that needs the GIL then aborts the process
    ("terminate called without an active exception", SIGABRT) after every result was written.
    Call it after the ``try/finally`` that destroys the group, so a failing rank still raises."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

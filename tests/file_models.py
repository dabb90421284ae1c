"""Small pruned models and their saved files, shared by the file-safety tests and their workers."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

import pdprune
from pdprune.export import save_dense, save_sparse


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.head(x.mean((2, 3)))


class HeadNet(nn.Module):
    """Self-attention whose head count is an attribute, declared to pdprune as a group."""

    def __init__(self, d: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, d)
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.head = nn.Linear(d, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v
        return self.head(self.o(attention.transpose(1, 2).reshape(b, t, -1)).mean(1))


HEAD_SPEC = pdprune.ChannelGroupSpec(
    name="heads", producers=("q", "k", "v"), consumers=("o",), units=4, counts={"heads": "units"}
)


def conv_input() -> torch.Tensor:
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(5))


def head_input() -> torch.Tensor:
    return torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(5))


def shrunk(kind: str, seed: int = 0) -> pdprune.ChannelPruner:
    """A channel-pruned, finalized and shrunk ConvNet ("conv") or HeadNet ("heads")."""
    torch.manual_seed(seed)
    model, x = (ConvNet(), conv_input()) if kind == "conv" else (HeadNet(), head_input())
    pattern = pdprune.Channels() if kind == "conv" else pdprune.Channels(groups=(HEAD_SPEC,))
    config = pdprune.PruneConfig(
        sparsity=0.5, pattern=pattern, schedule=pdprune.Schedule(8, warmup=0, ramp=4)
    )
    pruner = pdprune.prepare(model, config, example_inputs=x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(8):
        optimizer.zero_grad()
        model(x).float().pow(2).mean().backward()
        optimizer.step()
        pruner.step()
    pruner.finalize()
    pruner.shrink()
    model.eval()
    return pruner


def pruned_mlp(seed: int = 0, width: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 4))
    schedule = pdprune.Schedule(4, warmup=0, ramp=2)
    pruner = pdprune.prepare(model, pdprune.PruneConfig(sparsity=0.9, schedule=schedule))
    for _ in range(4):
        pruner.step()
    pruner.finalize()
    return model


def save(kind: str, model_or_pruner, path: Path) -> None:
    """Write one format: "sparse", "dense" (a model) or "shrunk" (a pruner)."""
    if kind == "sparse":
        save_sparse(model_or_pruner, path)
    elif kind == "dense":
        save_dense(model_or_pruner, path)
    else:
        pdprune.save_shrunk(model_or_pruner, path)


def big_mlp(seed: int = 0) -> nn.Module:
    """Two 2048x2048 layers (32 MiB of float32 weights) at 90% sparsity, for memory bounds."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 2048))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) > 0.9)
    return model

"""A user's own model, as `pdprune bench latency --model tests.user_model:tiny_mlp` reaches it."""

from torch import nn


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


not_a_factory = 3

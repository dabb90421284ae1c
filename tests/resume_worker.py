"""Run part of a pruning run in its own process: the resume test compares the pieces."""

import sys

import torch

import pdprune
from tests.helpers import config, mlp, train_steps

TOTAL = 60


def main(phase: str, stop: int, path: str, checkpoint_path: str = "") -> None:
    model = mlp(seed=0)
    pruner = pdprune.prepare(model, config(total=TOTAL))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = 0
    if phase == "resume":
        checkpoint = torch.load(checkpoint_path, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        pruner.load_state_dict(checkpoint["pruner"])
        start = pruner.step_count
    train_steps(model, pruner, optimizer, start, stop)
    if phase == "first":
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "pruner": pruner.state_dict(),
        }
        torch.save(state, path)
        return
    pruner.finalize()
    torch.save({"model": model.state_dict()}, path)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])

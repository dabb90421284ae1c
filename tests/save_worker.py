"""Worker for the kill tests: save two versions of a model to one path, alternately, until killed.

python -m tests.save_worker sparse|dense|shrunk PATH
Prints "ready" once the first save has landed, so the parent's kill falls among later saves.
"""

import sys
from pathlib import Path


def versions(kind: str) -> list:
    from tests.file_models import big_mlp, shrunk

    if kind == "shrunk":
        return [shrunk("conv", seed=0), shrunk("conv", seed=1)]
    return [big_mlp(seed=0), big_mlp(seed=1)]


def main() -> None:

    from tests.file_models import save

    kind, path = sys.argv[1], Path(sys.argv[2])
    both = versions(kind)
    save(kind, both[0], path)
    print("ready", flush=True)
    turn = 1
    while True:
        save(kind, both[turn], path)
        turn = 1 - turn


if __name__ == "__main__":
    main()

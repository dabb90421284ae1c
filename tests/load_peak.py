"""Worker: load one file or folder and print the peak memory the attempt added, in KiB.

python -m tests.load_peak sparse|dense|shrunk PATH
The peak resident size is reset (Linux /proc/self/clear_refs) after the imports, so what is
measured is the load alone.
"""

import json
import sys
import warnings


def _peak_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    import torch

    import pdprune
    from pdprune.export import load_dense, load_sparse
    from tests.file_models import ConvNet, big_mlp

    kind, path = sys.argv[1], sys.argv[2]
    model = big_mlp() if kind == "dense" else None
    torch.set_num_threads(1)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _rss_kib()
    outcome = "loaded"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if kind == "sparse":
                load_sparse(path)
            elif kind == "dense":
                load_dense(model, path)
            else:
                pdprune.load_shrunk(path, ConvNet)
        except pdprune.CheckpointError:
            outcome = "refused"
    print(json.dumps({"outcome": outcome, "peak_kib": _peak_kib() - before}))


if __name__ == "__main__":
    main()

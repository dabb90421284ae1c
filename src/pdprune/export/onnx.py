"""ONNX export of a (pruned, shrunk) model, checked against PyTorch by onnxruntime before it is written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pdprune.io import atomic_write

__all__ = ["save_onnx"]

#: Weights up to this size are stored inside the .onnx file (one file, replaced atomically); larger
#: models keep them in ``NAME.onnx.data`` beside it, written just before the .onnx file.
EMBEDDED_LIMIT = 3 * 2**29


def save_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    dynamic_batch: bool = True,
    check: bool = True,
    tolerance: float = 1e-4,
) -> float | None:
    """Export ``model`` (e.g. a channel-shrunk one) to ONNX at ``path``, atomically.

    With ``check``, onnxruntime runs the file on ``example_inputs`` and the largest difference to
    PyTorch's outputs, relative to their largest magnitude, is returned; above ``tolerance`` it
    is an error and nothing is written. Needs ``pip install 'pdprune[onnx]'``.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'pdprune[onnx]'"
        ) from None
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        dims = tuple({0: torch.export.Dim("batch")} for _ in inputs) if dynamic_batch else None

        stored = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        external = stored >= EMBEDDED_LIMIT  # protobuf caps one file at 2 GiB

        def write(tmp: Path) -> None:
            torch.onnx.export(
                model,
                inputs,
                str(tmp),
                dynamo=True,
                dynamic_shapes=dims,
                verbose=False,
                external_data=external,
            )
            if check:
                session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
                feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
                got = session.run(None, feeds)
                with torch.no_grad():
                    expected = model(*inputs)
                expected = expected if isinstance(expected, (tuple, list)) else (expected,)
                worst = 0.0
                for e, g in zip(expected, got):
                    e = e.detach().cpu().float().numpy()
                    worst = max(worst, float(np.abs(e - g).max() / max(float(np.abs(e).max()), 1e-12)))
                errors.append(worst)
                if worst > tolerance:
                    raise ValueError(
                        f"the ONNX model's outputs differ from PyTorch's by {worst:.2e} (relative), "
                        f"above tolerance {tolerance:g}; the file was not written"
                    )

        errors: list[float] = []
        atomic_write(path, write, companions=external)
    finally:
        model.train(was_training)
    return errors[0] if errors else None

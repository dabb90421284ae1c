"""Exports of a pruned model: dense with zeros, a compressed sparse checkpoint, a channel-shrunk
model with its shape plan, ONNX, and 2:4 semi-structured weights for GPUs that accelerate them."""

from pdprune.export.dense import load_dense, save_dense
from pdprune.export.onnx import save_onnx
from pdprune.export.semi_structured import accelerate_2to4
from pdprune.export.shrunk import load_shrunk, save_shrunk
from pdprune.export.sparse import load_sparse, save_sparse, sparse_size_report

__all__ = [
    "accelerate_2to4",
    "load_dense",
    "load_shrunk",
    "load_sparse",
    "save_dense",
    "save_onnx",
    "save_shrunk",
    "save_sparse",
    "sparse_size_report",
]

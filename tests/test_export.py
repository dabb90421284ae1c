"""Compressed and dense checkpoints of pruned models: exact, smaller, loadable into the stock class."""

import json

import pytest
import torch
from safetensors.torch import load_model
from torch import nn

import pdprune
from pdprune.export import load_sparse, save_dense, save_sparse, sparse_size_report
from tests.helpers import config, mlp, train_steps


def _pruned_mlp(sparsity=0.9, **kwargs):
    model = mlp()
    pruner = pdprune.prepare(model, config(sparsity=sparsity, **kwargs))
    train_steps(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), 0, 60)
    pruner.finalize()
    return model


def _bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def test_round_trip_is_bit_exact_and_loads_into_the_stock_class(tmp_path):
    model = _pruned_mlp()
    save_sparse(model, tmp_path / "m.safetensors")
    state = load_sparse(tmp_path / "m.safetensors")
    assert list(state) == list(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(_bits(state[name]), _bits(tensor)) and state[name].dtype == tensor.dtype
    stock = mlp(seed=1)
    stock.load_state_dict(state)
    x = torch.randn(5, 16)
    assert torch.equal(stock(x), model(x))


def test_at_90_percent_the_file_is_at_most_a_fifth_of_dense(tmp_path):
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    pruner = pdprune.prepare(
        big, pdprune.PruneConfig(sparsity=0.9, schedule=pdprune.Schedule(2, warmup=0, ramp=1))
    )
    pruner.step()
    pruner.finalize()
    save_dense(big, tmp_path / "dense.safetensors")
    save_sparse(big, tmp_path / "sparse.safetensors")
    sizes = sparse_size_report(tmp_path / "dense.safetensors", tmp_path / "sparse.safetensors")
    assert sizes["ratio"] <= 0.2
    stock = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    load_model(stock, str(tmp_path / "dense.safetensors"))
    assert torch.equal(stock[0].weight, big[0].weight)


def test_negative_zero_nan_half_precision_ints_and_empty_tensors_survive(tmp_path):
    weight = torch.zeros(4, 8)
    weight[0, 0], weight[1, 1], weight[2, 2] = -0.0, float("nan"), 3.5
    state = {
        "w": weight,
        "h": (torch.randn(6, 6) * (torch.rand(6, 6) > 0.8)).to(torch.bfloat16),
        "f16": torch.zeros(10, dtype=torch.float16),
        "steps": torch.tensor(7),
        "flags": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
    }
    save_sparse(state, tmp_path / "s.safetensors")
    back = load_sparse(tmp_path / "s.safetensors")
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(_bits(back[name]), _bits(tensor)), name
    assert str(back["w"][0, 0].item()) == "-0.0"


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    embed = nn.Embedding(50, 16)
    head = nn.Linear(16, 50, bias=False)
    head.weight = embed.weight
    model = nn.ModuleDict({"embed": embed, "head": head})
    with torch.no_grad():
        embed.weight[torch.rand(50, 16) < 0.9] = 0
    save_sparse(model, tmp_path / "t.safetensors")
    back = load_sparse(tmp_path / "t.safetensors")
    assert back["embed.weight"] is back["head.weight"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as f:
        stored = set(f.keys())
        assert "head.weight::values" not in stored and json.loads(f.metadata()["pdprune"])["tensors"][
            "head.weight"
        ] == {"alias": "embed.weight"}


def test_nm_models_round_trip(tmp_path):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    pruner = pdprune.prepare(
        model, pdprune.PruneConfig(pattern="2:4", schedule=pdprune.Schedule(2, warmup=0, ramp=1))
    )
    pruner.step()
    pruner.finalize()
    save_sparse(model, tmp_path / "nm.safetensors")
    assert torch.equal(load_sparse(tmp_path / "nm.safetensors")["0.weight"], model[0].weight)


def test_other_files_are_refused_with_the_reason(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a pdprune sparse checkpoint"):
        load_sparse(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_sparse(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_sparse(tmp_path / "absent.safetensors")


def test_hardening_leaves_positive_zeros():
    model = _pruned_mlp()
    for weight in (model[0].weight, model[2].weight):
        zeros = weight[weight == 0]
        assert zeros.numel() and not bool(torch.signbit(zeros).any())


@pytest.mark.slow
def test_onnx_of_a_shrunk_model_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from benchmarks.harness.models import SmallResNet
    from pdprune.export import save_onnx

    torch.manual_seed(0)
    model, x = SmallResNet(), torch.randn(2, 1, 28, 28)
    pruner = pdprune.prepare(
        model,
        pdprune.PruneConfig(sparsity=0.5, pattern="channel", schedule=pdprune.Schedule(2, warmup=0, ramp=1)),
        example_inputs=x,
    )
    pruner.step()
    pruner.finalize()
    pruner.shrink()
    error = save_onnx(model, tmp_path / "shrunk.onnx", x)
    assert error is not None and error < 1e-4
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "shrunk.onnx"), providers=["CPUExecutionProvider"])
    batch = torch.randn(5, 1, 28, 28)  # another batch size: the batch dimension is dynamic
    got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    model.eval()
    assert float((torch.from_numpy(got) - model(batch).detach()).abs().max()) < 1e-4


@pytest.mark.parametrize("embedded", [True, False])
def test_onnx_files_are_whole_and_leave_nothing_beside_them(tmp_path, monkeypatch, embedded):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    import pdprune.export.onnx as onnx_export

    if not embedded:  # as a model past protobuf's 2 GiB would be: weights in NAME.onnx.data
        monkeypatch.setattr(onnx_export, "EMBEDDED_LIMIT", 0)
    model, x = mlp(), torch.randn(3, 16)
    onnx_export.save_onnx(model, tmp_path / "m.onnx", x)
    expected = ["m.onnx"] if embedded else ["m.onnx", "m.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert float((torch.from_numpy(got) - model(x).detach()).abs().max()) < 1e-5


def test_multiply_pruned_weights_with_negative_zeros_still_compress(tmp_path):
    torch.manual_seed(0)
    weight = torch.randn(256, 256) * (torch.rand(256, 256) > 0.9)  # w * mask leaves -0.0 for negative w
    assert bool(torch.signbit(weight[weight == 0]).any())
    save_sparse({"w": weight}, tmp_path / "w.safetensors")
    save_dense(nn.ParameterDict({"w": nn.Parameter(weight)}), tmp_path / "d.safetensors")
    assert sparse_size_report(tmp_path / "d.safetensors", tmp_path / "w.safetensors")["ratio"] < 0.25
    assert torch.equal(_bits(load_sparse(tmp_path / "w.safetensors")["w"]), _bits(weight))


def test_float8_and_dtype_break_even(tmp_path):
    state = {
        "f8": (torch.randn(64, 64) * (torch.rand(64, 64) > 0.5)).to(torch.float8_e4m3fn),
        "dense_bf16": torch.randn(64, 64).to(torch.bfloat16),
    }
    save_sparse(state, tmp_path / "f8.safetensors")
    back = load_sparse(tmp_path / "f8.safetensors")
    assert torch.equal(_bits(back["f8"]), _bits(state["f8"])) and torch.equal(
        back["dense_bf16"], state["dense_bf16"]
    )


def test_tied_tensors_are_matched_on_their_own_memory_not_a_temporary_copy(tmp_path, monkeypatch):
    layers = {f"l{i}": torch.randn(16, 16) * (torch.rand(16, 16) > 0.8) for i in range(6)}
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(
        torch.Tensor, "cpu", lambda self, *a, **k: real_cpu(self, *a, **k).clone()
    )  # as a GPU would
    save_sparse(layers, tmp_path / "l.safetensors")
    back = load_sparse(tmp_path / "l.safetensors")
    assert all(torch.equal(back[k], v) for k, v in layers.items())

"""Heads of PyTorch's nn.MultiheadAttention: found, masked per head (q, k, v rows together),
removed whole by turning the module into HeadPrunedMultiheadAttention, and replayed from the
portable checkpoint in a fresh process."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import pdprune
from pdprune.channel.attention import HeadPrunedMultiheadAttention, MHAHeadGroup, remove_mha_heads

ROOT = Path(__file__).resolve().parent.parent


class TinyViT(nn.Module):
    """Patches of a 28x28 image, a class token, nn.TransformerEncoder blocks, a linear head."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 7, 7)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1)
        return self.head(self.encoder(tokens)[:, 0])


def _zero_heads(module: nn.MultiheadAttention, heads: list[int]) -> None:
    d, width = module.head_dim, module.embed_dim
    with torch.no_grad():
        for h in heads:
            for block in range(3):
                rows = slice(block * width + h * d, block * width + (h + 1) * d)
                module.in_proj_weight[rows] = 0
                module.in_proj_bias[rows] = 0


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masks", ["none", "bool", "float", "per-head"])
def test_removed_heads_compute_what_the_zeroed_heads_did(batch_first, need_weights, masks):
    torch.manual_seed(0)
    module = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    query, memory = torch.randn(2, 5, 16), torch.randn(2, 6, 16)  # cross-attention: other lengths
    if not batch_first:
        query, memory = query.transpose(0, 1), memory.transpose(0, 1)
    kwargs = {"need_weights": need_weights}
    if masks == "bool":
        kwargs |= {
            "attn_mask": torch.rand(5, 6) > 0.7,
            "key_padding_mask": torch.tensor([[False] * 5 + [True], [False] * 6]),
        }
        kwargs["attn_mask"][:, 0] = False  # every query sees at least one key
    elif masks == "float":
        kwargs |= {"attn_mask": torch.randn(5, 6), "key_padding_mask": torch.randn(2, 6)}
    elif masks == "per-head":
        kwargs["attn_mask"] = torch.randn(2 * 4, 5, 6)
    _zero_heads(module, [1, 3])
    with torch.no_grad():
        expected = module(query, memory, memory, **kwargs)[0]
        remove_mha_heads(module, [1, 3])
        got, weights = module(query, memory, memory, **kwargs)
    assert isinstance(module, nn.MultiheadAttention) and type(module) is HeadPrunedMultiheadAttention
    assert module.num_heads == 2 and module.kept_heads == (0, 2) and module.embed_dim == 16
    assert module.in_proj_weight.shape == (24, 16) and module.out_proj.weight.shape == (16, 8)
    assert _relative(got, expected) < 1e-5
    assert (weights is not None) == need_weights
    if need_weights:
        assert weights.shape == (2, 5, 6) and torch.allclose(weights.sum(-1), torch.ones(2, 5))


def test_unbatched_inputs_causal_hint_and_a_second_removal_keep_original_head_indices():
    torch.manual_seed(0)
    module = nn.MultiheadAttention(16, 4).eval()
    x = torch.randn(5, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    _zero_heads(module, [0, 2])
    with torch.no_grad():
        expected = module(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)[0]
        remove_mha_heads(module, [0])
        remove_mha_heads(module, [1])  # original head 2 (head 1 of the three left)
        got = module(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)[0]
    assert module.kept_heads == (1, 3) and module.original_num_heads == 4
    assert got.shape == (5, 16) and _relative(got, expected) < 1e-5
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        module(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match="keep at least one"):
        remove_mha_heads(module, [0, 1])


def test_vit_heads_are_found_trained_removed_and_budgeted_by_flops():
    torch.manual_seed(0)
    model, x = TinyViT(), torch.randn(4, 1, 28, 28)
    config = pdprune.PruneConfig(
        sparsity=0.5,
        pattern=pdprune.Channels(unit="flops"),
        schedule=pdprune.Schedule(20, warmup=0.1, ramp=0.5),
    )
    pruner = pdprune.prepare(model, config, example_inputs=x[:2])
    attention = {n: g for n, g in pruner.groups.items() if isinstance(g, MHAHeadGroup)}
    assert set(attention) == {"encoder.layers.0.self_attn", "encoder.layers.1.self_attn"}
    assert all(g.channels == 4 and g.width == 8 for g in attention.values())
    keys = set(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), torch.arange(4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
    predicted = pruner.finalize().model_params[1]
    model.eval()
    with torch.no_grad():
        masked = model(x)
    pruner.shrink()
    with torch.no_grad():
        shrunk = model(x)
    assert _relative(shrunk, masked) < 1e-5
    assert sum(p.numel() for p in model.parameters()) == predicted  # the report's forecast, before removal
    for layer in model.encoder.layers:
        assert type(layer.self_attn) is HeadPrunedMultiheadAttention and layer.self_attn.num_heads == 2
    assert set(model.state_dict()) == keys  # same names, smaller tensors
    report = pruner.report()
    rows = {layer.name: layer for layer in report.layers}
    assert rows["encoder.layers.0.self_attn"].macs[1] == rows["encoder.layers.0.self_attn"].macs[0] // 2
    assert (
        rows["encoder.layers.0.self_attn.out_proj"].params[1]
        < rows["encoder.layers.0.self_attn.out_proj"].params[0]
    )
    assert 0.5 <= report.achieved_sparsity < 0.55
    assert "heads: 4 of 8 kept" in report.to_text()


def test_attention_that_cannot_lose_heads_is_left_alone_with_the_reason():
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.kv = nn.MultiheadAttention(16, 4, kdim=8, vdim=8, batch_first=True)
            self.bias_kv = nn.MultiheadAttention(16, 4, add_bias_kv=True, batch_first=True)
            self.hidden = nn.Linear(16, 32)
            self.out = nn.Linear(32, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x).relu()
            h = self.kv(h, x, x, need_weights=False)[0]
            return self.out(self.hidden(self.bias_kv(h, h, h, need_weights=False)[0]).relu())

    config = pdprune.PruneConfig(sparsity=0.5, pattern="channel", schedule=pdprune.Schedule(10))
    pruner = pdprune.prepare(Cross(), config, example_inputs=torch.randn(2, 3, 8))
    assert "separate q/k/v weights" in pruner.skipped["kv"]
    assert "add_bias_kv" in pruner.skipped["bias_kv"]
    assert set(pruner.groups) == {"hidden"}
    off = pdprune.prepare(
        TinyViT(),
        pdprune.PruneConfig(
            sparsity=0.5, pattern=pdprune.Channels(heads=False), schedule=pdprune.Schedule(10)
        ),
        example_inputs=torch.randn(2, 1, 28, 28),
    )
    assert not any(isinstance(g, MHAHeadGroup) for g in off.groups.values())


def test_vit_heads_round_trip_through_the_portable_checkpoint_in_a_fresh_process(tmp_path):
    torch.manual_seed(2)
    model, x = TinyViT(), torch.randn(3, 1, 28, 28)
    config = pdprune.PruneConfig(
        sparsity=0.5, pattern="channel", schedule=pdprune.Schedule(1, warmup=0, ramp=0)
    )
    pruner = pdprune.prepare(model, config, example_inputs=x[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hardening at step 0: shapes are the point
        pruner.finalize()
    pruner.shrink()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    pdprune.save_shrunk(pruner, tmp_path)
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    script = (
        "import sys, torch, pdprune\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from tests.test_channel_mha import TinyViT\n"
        "model = pdprune.load_shrunk(sys.argv[1], TinyViT).eval()\n"
        "io = torch.load(sys.argv[1] + '/io.pt', weights_only=True)\n"
        "with torch.no_grad():\n"
        "    out = model(io['x'])\n"
        "heads = [type(l.self_attn).__name__ + str(l.self_attn.num_heads) for l in model.encoder.layers]\n"
        "assert heads == ['HeadPrunedMultiheadAttention2'] * 2, heads\n"
        "assert float((out - io['expected']).abs().max()) < 1e-5\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="install with: pip install 'pdprune[onnx]'",
)
def test_a_vit_with_removed_heads_exports_to_onnx(tmp_path):
    from pdprune.export import save_onnx

    torch.manual_seed(3)
    model, x = TinyViT(), torch.randn(2, 1, 28, 28)
    config = pdprune.PruneConfig(
        sparsity=0.5, pattern="channel", schedule=pdprune.Schedule(1, warmup=0, ramp=0)
    )
    pruner = pdprune.prepare(model, config, example_inputs=x[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.finalize()
    pruner.shrink()
    error = save_onnx(model, tmp_path / "vit.onnx", x)  # onnxruntime checks the file against PyTorch
    assert error is not None and error < 1e-4 and (tmp_path / "vit.onnx").stat().st_size > 0

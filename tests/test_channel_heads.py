"""Attention heads and declared channel groups: masked per head, removed whole, with the modules'
head counts updated, and the portable checkpoint replaying it all."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import pdprune
from pdprune.channel.costs import unit_step
from pdprune.channel.declared import DeclaredGroup, HeadGroup
from pdprune.channel.groups import TracedGroup
from pdprune.errors import CheckpointError
from tests.test_files import _edit_plan

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
transformers = pytest.importorskip("transformers")


def tiny_bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=16,
    )
    return transformers.BertModel(config)


class HeadBlock(nn.Module):
    """A user's attention block: its head count is an attribute, its forward infers the width."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v
        return self.norm(x + self.o(attention.transpose(1, 2).reshape(b, t, -1)))


class HeadEncoder(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, d)
        self.blocks = nn.Sequential(HeadBlock(d, heads), HeadBlock(d, heads))
        self.head = nn.Linear(d, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(ids)).mean(1))


def block_specs(units: int = 4, counts: bool = True) -> tuple[pdprune.ChannelGroupSpec, ...]:
    return tuple(
        pdprune.ChannelGroupSpec(
            name=f"blocks.{i}.heads",
            producers=(f"blocks.{i}.q", f"blocks.{i}.k", f"blocks.{i}.v"),
            consumers=(f"blocks.{i}.o",),
            units=units,
            counts={f"blocks.{i}.heads": "units"} if counts else {},
        )
        for i in range(2)
    )


def _config(total=24, **channels):
    return pdprune.PruneConfig(
        sparsity=0.5,
        pattern=pdprune.Channels(**channels),
        schedule=pdprune.Schedule(total, warmup=0.1, ramp=0.5),
    )


def _train(model, pruner, call, steps):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    for _ in range(steps):
        loss = call(model).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()


def _bert_call(ids):
    return lambda model: model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def test_bert_heads_are_masked_whole_and_removed_with_the_head_count_updated():
    torch.manual_seed(0)
    model, ids = tiny_bert(), torch.randint(0, 60, (3, 9))
    pruner = pdprune.prepare(
        model, _config(), example_inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    )
    heads = [g for g in pruner.groups.values() if type(g) is HeadGroup]
    assert [g.name for g in heads] == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]
    assert all(g.channels == 4 and g.width == 8 for g in heads)
    assert not any("attention.self.value" in name for name in pruner.skipped)  # covered by the head groups
    _train(model, pruner, _bert_call(ids), 24)
    report = pruner.finalize()
    for g in heads:  # every head is all in or all out, in q, k and v alike
        rows = torch.stack([m.module.weight.detach().abs().sum(1) for m in g.members]).view(3, 4, 8)
        assert ((rows > 0).all(-1) | (rows == 0).all(-1)).all() and (
            (rows > 0).all(0) | (rows == 0).all(0)
        ).all()
    model.eval()
    with torch.no_grad():
        masked = _bert_call(ids)(model)
    pruner.shrink()
    with torch.no_grad():
        shrunk = _bert_call(ids)(model)
    assert float((shrunk - masked).norm() / masked.norm()) < 1e-5
    attention = model.encoder.layer[0].attention.self
    assert attention.num_attention_heads == 2 and attention.all_head_size == 16
    assert (
        attention.query.out_features == 16 and model.encoder.layer[0].attention.output.dense.in_features == 16
    )
    assert report.groups["encoder.layer.0.attention.self"] == (4, 2)
    assert "heads: 4 of 8 kept in 2 groups" in report.to_text()
    assert report.to_dict()["groups"]["encoder.layer.1.attention.self"]["unit"] == "heads"


def test_heads_off_leaves_attention_alone():
    ids = torch.randint(0, 60, (2, 5))
    pruner = pdprune.prepare(tiny_bert(), _config(heads=False), example_inputs={"input_ids": ids})
    assert all(type(g) is TracedGroup for g in pruner.groups.values())
    assert any("attention.self" in name for name in pruner.skipped)


def test_declared_head_groups_for_a_users_block_round_trip_in_a_fresh_process(tmp_path):
    torch.manual_seed(1)
    model, ids = HeadEncoder(), torch.randint(0, 50, (4, 7))
    pruner = pdprune.prepare(model, _config(groups=block_specs()), example_inputs=ids)
    assert {g.name for g in pruner.groups.values() if type(g) is DeclaredGroup} == {
        "blocks.0.heads",
        "blocks.1.heads",
    }
    _train(model, pruner, lambda m: m(ids), 24)
    pruner.finalize()
    model.eval()
    with torch.no_grad():
        masked = model(ids)
    pruner.shrink()
    assert [b.heads for b in model.blocks] == [2, 2] and model.blocks[1].o.in_features == 16
    with torch.no_grad():
        assert float((model(ids) - masked).norm() / masked.norm()) < 1e-5
    pdprune.save_shrunk(pruner, tmp_path)
    torch.save(ids, tmp_path / "ids.pt")
    torch.save(masked, tmp_path / "expected.pt")
    script = (
        "import sys, torch, pdprune\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from tests.test_channel_heads import HeadEncoder\n"
        "model = pdprune.load_shrunk(sys.argv[1], HeadEncoder).eval()\n"
        "ids = torch.load(sys.argv[1] + '/ids.pt', weights_only=True)\n"
        "expected = torch.load(sys.argv[1] + '/expected.pt', weights_only=True)\n"
        "with torch.no_grad():\n"
        "    out = model(ids)\n"
        "assert [b.heads for b in model.blocks] == [2, 2], [b.heads for b in model.blocks]\n"
        "assert float((out - expected).norm() / expected.norm()) < 1e-5\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_bert_heads_round_trip_through_the_portable_checkpoint(tmp_path):
    torch.manual_seed(2)
    model, ids = tiny_bert(), torch.randint(0, 60, (2, 6))
    pruner = pdprune.prepare(
        model, _config(), example_inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    )
    _train(model, pruner, _bert_call(ids), 24)
    pruner.finalize()
    pruner.shrink()
    model.eval()
    pdprune.save_shrunk(pruner, tmp_path)
    rebuilt = pdprune.load_shrunk(tmp_path, transformers.BertModel, model.config).eval()
    assert rebuilt.encoder.layer[1].attention.self.num_attention_heads == 2
    with torch.no_grad():
        assert torch.equal(_bert_call(ids)(rebuilt), _bert_call(ids)(model))


def test_declared_groups_that_do_not_fit_are_refused_with_the_reason():
    ids = torch.randint(0, 50, (2, 5))

    def prepare(*specs, model=None):
        return pdprune.prepare(model or HeadEncoder(), _config(groups=specs), example_inputs=ids)

    with pytest.raises(ValueError, match=r"no module named blocks\.0\.qq"):
        prepare(pdprune.ChannelGroupSpec("g", producers=("blocks.0.qq",)))
    with pytest.raises(ValueError, match="do not split into 5 equal units"):
        prepare(
            pdprune.ChannelGroupSpec(
                "g", producers=("blocks.0.q", "blocks.0.k", "blocks.0.v"), consumers=("blocks.0.o",), units=5
            )
        )
    with pytest.raises(ValueError, match=r"disagree on the group's channel count \(0: 16, 4: 4\)"):
        mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 2))
        pdprune.prepare(
            mlp,
            _config(groups=(pdprune.ChannelGroupSpec("g", producers=("0",), consumers=("4",)),)),
            example_inputs=torch.randn(2, 8),
        )
    with pytest.raises(ValueError, match="has no int attribute 'n_heads'"):
        prepare(
            pdprune.ChannelGroupSpec(
                "g",
                producers=("blocks.0.q", "blocks.0.k", "blocks.0.v"),
                consumers=("blocks.0.o",),
                units=4,
                counts={"blocks.0.n_heads": "units"},
            )
        )
    # Heads removed without updating the head count: the reshape now splits the wrong way.
    with pytest.raises(ValueError, match="cannot be removed faithfully"):
        prepare(*block_specs(counts=False))
    # Single channels of q/k/v (units=None) break the per-head reshape: caught before training.
    with pytest.raises(ValueError, match="cannot be removed faithfully"):
        prepare(
            pdprune.ChannelGroupSpec(
                "g",
                producers=("blocks.0.q", "blocks.0.k", "blocks.0.v"),
                consumers=("blocks.0.o",),
                counts={"blocks.0.heads": "units"},
            )
        )
    with pytest.raises(ValueError, match="more than once"):
        pdprune.Channels(groups=block_specs()[:1] * 2)
    with pytest.raises(ValueError, match="list of module names"):
        pdprune.ChannelGroupSpec("g", producers="blocks.0.q")
    with pytest.raises(ValueError, match="'units' or 'channels'"):
        pdprune.ChannelGroupSpec("g", producers=("a",), counts={"a.heads": "heads"})


def test_head_budgets_round_to_whole_heads_and_count_their_channels():
    model = HeadEncoder(d=64, heads=16)  # heads of 4 channels
    ids = torch.randint(0, 50, (2, 5))
    specs = tuple(
        pdprune.ChannelGroupSpec(
            name=f"blocks.{i}.heads",
            producers=(f"blocks.{i}.q", f"blocks.{i}.k", f"blocks.{i}.v"),
            consumers=(f"blocks.{i}.o",),
            units=16,
            counts={f"blocks.{i}.heads": "units"},
        )
        for i in range(2)
    )
    pruner = pdprune.prepare(model, _config(groups=specs, round_to=8, unit="flops"), example_inputs=ids)
    group = pruner.groups["blocks.0.heads"]
    assert unit_step(group, 8) == 2  # 2 heads of 4 channels = 8 channels
    for name in ("blocks.0.heads", "blocks.1.heads"):
        assert (pruner.keep[name] * 4) % 8 == 0
    before, after = pruner.report().macs
    assert 0.4 * before <= after <= 0.5 * before  # the FLOPs budget is met, not overshot by far


def test_three_heads_are_tried_with_one_left_and_norms_without_running_stats_count_their_channels():
    ids = torch.randint(0, 50, (4, 7))
    pruner = pdprune.prepare(
        HeadEncoder(d=24, heads=3), _config(groups=block_specs(units=3)), example_inputs=ids
    )
    assert pruner.groups["blocks.0.heads"].channels == 3

    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False)
            self.conv2 = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.conv2(torch.relu(self.bn1(self.conv1(x)))).mean((2, 3))

    spec = pdprune.ChannelGroupSpec("g", producers=("conv1", "bn1"), consumers=("conv2",), units=4)
    pruner = pdprune.prepare(ConvNet(), _config(groups=(spec,)), example_inputs=torch.randn(2, 3, 8, 8))
    assert pruner.groups["g"].width == 2


def test_a_producer_whose_weights_are_read_directly_is_an_error_at_the_first_step():
    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.q, self.k, self.v, self.o = (nn.Linear(16, 16) for _ in range(4))
            self.ff1, self.ff2 = nn.Linear(16, 32), nn.Linear(32, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, ids):
            x = self.embed(ids)
            b, t, _ = x.shape
            qkv = nn.functional.linear(
                x,
                torch.cat([self.q.weight, self.k.weight, self.v.weight]),
                torch.cat([self.q.bias, self.k.bias, self.v.bias]),
            )
            q, k, v = (part.reshape(b, t, -1, 4).transpose(1, 2) for part in qkv.chunk(3, -1))
            mixed = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
            x = x + self.o(mixed.transpose(1, 2).reshape(b, t, -1))
            x = x + self.ff2(torch.relu(self.ff1(x)))
            return self.head(x.mean(1))

    ids = torch.randint(0, 50, (3, 5))
    spec = pdprune.ChannelGroupSpec("heads", producers=("q", "k", "v"), consumers=("o",), units=4)
    model = Fused()
    pruner = pdprune.prepare(model, _config(groups=(spec,)), example_inputs=ids)
    model(ids).sum().backward()
    with pytest.raises(RuntimeError, match=r"never called through their forward\(\).*q \(group heads\)"):
        pruner.step()
    with pytest.raises(ValueError, match="more than once"):
        pdprune.ChannelGroupSpec("g", producers=("q", "q"))


class SharedKeyBlock(nn.Module):
    """A user's block with a fused q/k/v projection in one layer, then grouped-query attention:
    ``shared`` query heads read each key/value head."""

    def __init__(self, d: int = 32, kv_heads: int = 2, shared: int = 2) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.shared = kv_heads * shared, kv_heads, shared
        self.head_dim = d // self.heads
        self.qkv = nn.Linear(d, 3 * d)
        self.o1 = nn.Linear(d, d)
        self.q = nn.Linear(d, d)
        self.kv = nn.ModuleList(nn.Linear(d, kv_heads * self.head_dim) for _ in range(2))
        self.o2 = nn.Linear(d, d)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeat: int) -> torch.Tensor:
        b, t, _ = q.shape
        q, k, v = (p.view(b, t, -1, self.head_dim).transpose(1, 2) for p in (q, k, v))
        k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
        out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), -1) @ v
        return out.transpose(1, 2).reshape(b, t, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        x = x + self.o1(self.attend(q, k, v, 1))
        return x + self.o2(self.attend(self.q(x), self.kv[0](x), self.kv[1](x), self.shared))


def shared_key_specs() -> tuple[pdprune.ChannelGroupSpec, ...]:
    return (
        pdprune.ChannelGroupSpec(
            "fused",
            producers=("qkv",),
            consumers=("o1",),
            units=4,
            counts={"heads": "units"},
            stacked={"qkv": 3},
        ),
        pdprune.ChannelGroupSpec(
            "shared", producers=("q", "kv.0", "kv.1"), consumers=("o2",), units=2, repeats={"q": 2, "o2": 2}
        ),
    )


def test_fused_and_grouped_query_layouts_are_declared_removed_whole_and_replayed(tmp_path):
    torch.manual_seed(0)
    model, x = SharedKeyBlock(), torch.randn(3, 5, 32)
    config = pdprune.PruneConfig(
        sparsity=0.5,
        pattern=pdprune.Channels(groups=shared_key_specs()),
        schedule=pdprune.Schedule(12, ramp=0.5),
    )
    pruner = pdprune.prepare(model, config, example_inputs=x)
    _train(model, pruner, lambda m: m(x), 12)
    pruner.finalize()
    model.eval()
    with torch.no_grad():
        masked = model(x)
    pruner.shrink()
    assert model.qkv.out_features == 3 * 2 * 8 and model.o1.in_features == 16
    assert model.q.out_features == model.o2.in_features == 2 * 8 and model.kv[0].out_features == 8
    kept = pruner.masks()["shared"]
    assert kept.sum() == 1
    with torch.no_grad():
        assert float((model(x) - masked).norm() / masked.norm()) < 1e-5
    assert model.heads == 2
    pdprune.save_shrunk(pruner, tmp_path / "m")
    again = pdprune.load_shrunk(tmp_path / "m", SharedKeyBlock).eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    plan = json.loads((tmp_path / "m" / "plan.json").read_text())
    assert plan["declared"]["groups"][0]["widths"] == {"qkv": 24}  # q, k and v of a head of 8
    edits = [({"qkv": 8}, r"fused\.producers: qkv: 96 channels; expected 32"), ({"x": 2}, "widths")]
    for widths, message in edits:
        shutil.copytree(tmp_path / "m", tmp_path / "edited", dirs_exist_ok=True)
        _edit_plan(
            tmp_path / "edited", lambda p, w=widths: p["declared"]["groups"][0].__setitem__("widths", w)
        )
        with pytest.raises(CheckpointError, match=message):
            pdprune.load_shrunk(tmp_path / "edited", SharedKeyBlock)


def test_layouts_that_do_not_fit_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"stacked=.*producer of the group.*'o1': 3"):
        pdprune.ChannelGroupSpec("g", producers=("qkv",), consumers=("o1",), stacked={"o1": 3})
    with pytest.raises(ValueError, match=r"repeats=.*'q': 0"):
        pdprune.ChannelGroupSpec("g", producers=("q",), repeats={"q": 0})
    x = torch.randn(2, 5, 32)
    wrong = pdprune.ChannelGroupSpec("g", producers=("q", "kv.0", "kv.1"), consumers=("o2",), units=2)
    with pytest.raises(ValueError, match=r"disagree on the group's channel count \(q: 32, kv\.0: 16"):
        pdprune.prepare(SharedKeyBlock(), _config(groups=(wrong,)), example_inputs=x)
    # The query runs of each key/value head said to lie end to end (stacked) instead of side by side:
    # the shapes agree, the removal does not keep the outputs, and pdprune says so before training.
    swapped = pdprune.ChannelGroupSpec(
        "g", producers=("q", "kv.0", "kv.1"), consumers=("o2",), units=2, stacked={"q": 2}, repeats={"o2": 2}
    )
    with pytest.raises(ValueError, match="cannot be removed faithfully"):
        pdprune.prepare(SharedKeyBlock(), _config(groups=(swapped,)), example_inputs=x)

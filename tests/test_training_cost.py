"""The fused soft mask: same values and gradients as the plain composition, less saved state,
and PDP training that works under torch.compile and autocast."""

import pytest
import torch
from torch import nn

import pdprune
from pdprune.functional import midpoint_threshold, nm_threshold, soft_mask, soft_masked_weight
from tests.helpers import batch, config, mlp


def _reference(weight: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    return (soft_mask(weight, t, tau) * weight.float()).to(weight.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tau", [1e-5, 1e-4, 1e-2])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_fused_mask_matches_composition_of_elementary_ops(dtype, tau, pattern):
    torch.manual_seed(0)
    weight = (0.05 * torch.randn(48, 64)).to(dtype)
    t = midpoint_threshold(weight, 0.8) if pattern == "unstructured" else nm_threshold(weight, 2, 4)
    fused_w, ref_w = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    fused, ref = soft_masked_weight(fused_w, t, tau), _reference(ref_w, t, tau)
    grad = torch.randn(weight.shape).to(dtype)
    fused.backward(grad)
    ref.backward(grad)
    assert fused.dtype == dtype and fused_w.grad.dtype == dtype
    # w^2 - t^2 as one fused multiply-add rounds differently from (|w| - t)(|w| + t): the logits
    # differ by a few float32 ulps of w^2 / tau, which the sigmoid's slope carries into the values.
    tolerance = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    scale = float(ref_w.grad.float().abs().max())
    assert torch.allclose(
        fused.float(), ref.float(), atol=tolerance * float(weight.float().abs().max()), rtol=0
    )
    assert torch.allclose(fused_w.grad.float(), ref_w.grad.float(), atol=tolerance * scale, rtol=0)


def test_fused_mask_gradient_passes_gradcheck_in_float64():
    torch.manual_seed(0)
    weight = (0.05 * torch.randn(6, 8, dtype=torch.float64)).requires_grad_()
    t = midpoint_threshold(weight, 0.5)
    # The mask maths runs in float32 whatever the weight dtype, so the finite differences are
    # taken with a step and tolerance float32 resolves.
    assert torch.autograd.gradcheck(
        lambda w: soft_masked_weight(w, t, 1e-2), (weight,), eps=1e-4, atol=1e-3, rtol=1e-3
    )


def test_fused_mask_keeps_only_weight_and_threshold_for_backward():
    # The plain composition kept |w|, the logits, the sigmoid and a boolean for backward (four
    # weight-sized tensors per layer); the fused one keeps the weight (already alive) and t.
    weight = torch.randn(64, 32, requires_grad=True)
    t = midpoint_threshold(weight, 0.9)
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        soft_masked_weight(weight, t, 1e-4)
    assert len(saved) == 2
    assert saved[0] is weight or saved[0].data_ptr() == weight.data_ptr()
    assert saved[1].numel() == 1

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _reference(weight, t, 1e-4)
    assert sum(s.numel() >= weight.numel() for s in saved) >= 3  # what the fused op avoids


def test_huge_weights_give_no_nan_in_fused_forward_or_backward():
    weight = torch.tensor([3e38, -3e38, 1.0, 0.5, 2e19, 1e-30], dtype=torch.float32, requires_grad=True)
    t = midpoint_threshold(weight, 0.5)
    out = soft_masked_weight(weight, t, 1e-8)
    out.sum().backward()
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(weight.grad).all())
    assert torch.equal(out, weight.detach() * torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0]))


def _train(model: nn.Module, run, steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    pruner = pdprune.prepare(model, config(total=steps, warmup=2, ramp=6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for step in range(steps):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(run(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
        losses.append(loss.item())
    masks = pruner.masks()
    pruner.finalize()
    return losses, masks


def test_torch_compile_trains_like_eager_without_recompiling_every_step():
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()
    model = mlp()
    eager_losses, eager_masks = _train(model, model, 14)

    compiled = mlp()
    # aot_eager traces forward and backward the way inductor does (AOTAutograd), without
    # generating C++: the graph logic is what this test checks, not the code generator.
    run = torch.compile(compiled, backend="aot_eager")
    graphs_at: dict[int, int] = {}
    losses = []
    pruner = pdprune.prepare(compiled, config(total=14, warmup=2, ramp=6))
    optimizer = torch.optim.SGD(compiled.parameters(), lr=0.05)
    for step in range(14):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(run(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
        losses.append(loss.item())
        graphs_at[step] = dynamo.utils.counters["stats"]["unique_graphs"]
    masks = pruner.masks()
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    assert all(torch.equal(masks[name], eager_masks[name]) for name in masks)
    # The ramp changes the sparsity at every step from 2 to 8, and the temperature shrinks after
    # it; no graph is added step by step (the bookkeeping, threshold and temperature run outside
    # the graphs; were they traced, each step would recompile until dynamo's recompile limit sent
    # the layers back to eager). Once, when the masks have settled to exact 0/1, each layer's
    # masked forward gets its graph for that form.
    assert graphs_at[8] == graphs_at[2]
    assert graphs_at[13] <= graphs_at[2] + len(pruner.tensors)
    assert len({graphs_at[step] for step in range(10, 14)}) == 1
    report = pruner.finalize()
    assert report.achieved_sparsity == pytest.approx(0.9, abs=1e-3)
    dynamo.reset()


def test_bf16_autocast_training_reaches_the_budget():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=12, warmup=2, ramp=6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(12):
        x, y = batch(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        optimizer.step()
        pruner.step()
    assert pruner.finalize().achieved_sparsity == pytest.approx(0.9, abs=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_autocast_with_grad_scaler_on_cuda():
    model = mlp().cuda()
    pruner = pdprune.prepare(model, config(total=12, warmup=2, ramp=6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cuda")
    for step in range(12):
        x, y = (v.cuda() for v in batch(step))
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        pruner.step()
    assert pruner.finalize().achieved_sparsity == pytest.approx(0.9, abs=1e-3)


def test_a_compiled_graph_that_bypasses_the_masks_is_caught_at_the_next_step():
    # torch.compile does not guard on module hooks by default: a graph compiled for a model of
    # the same class before prepare() runs the layers without their masks. pdprune must say so
    # rather than train a dense model the user believes is being pruned.
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()
    dense = mlp()
    torch.compile(dense, backend="aot_eager")(batch(0)[0])
    model = mlp()
    pruner = pdprune.prepare(model, config(total=10, warmup=0, ramp=2))
    run = torch.compile(model, backend="aot_eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = batch(1)
    nn.functional.cross_entropy(run(x), y).backward()
    optimizer.step()
    with pytest.raises(RuntimeError, match=r"bypassed pdprune's hooks.*skip_nnmodule_hook_guards"):
        pruner.step()
    dynamo.reset()


class ChannelMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 32), nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_a_compiled_graph_that_bypasses_the_channel_masks_is_caught_too():
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()
    x, y = torch.randn(8, 12), torch.arange(8) % 3
    torch.compile(ChannelMLP(), backend="aot_eager")(x)
    model = ChannelMLP()
    channel = pdprune.PruneConfig(
        sparsity=0.5, pattern="channel", schedule=pdprune.Schedule(10, warmup=0, ramp=2)
    )
    pruner = pdprune.prepare(model, channel, example_inputs=x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):  # eager steps run the masks: no complaint
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()
    nn.functional.cross_entropy(torch.compile(model, backend="aot_eager")(x), y).backward()
    optimizer.step()
    with pytest.raises(RuntimeError, match=r"bypassed pdprune's hooks.*skip_nnmodule_hook_guards"):
        pruner.step()
    dynamo.reset()


def test_step_without_forward_or_update_only_advances_the_schedule():
    model = mlp()
    pruner = pdprune.prepare(model, config(total=10, warmup=0, ramp=2))
    for _ in range(5):
        pruner.step()
    assert pruner.step_count == 5


def test_step_cost_benchmark_writes_every_method_and_threshold_counts(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "step_cost", Path(__file__).resolve().parent.parent / "benchmarks" / "step_cost.py"
    )
    step_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_cost)
    assert (
        step_cost.main(
            [
                "--models",
                "resnet",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--phase",
                "after",
                "--out",
                str(tmp_path),
                "--tag",
                "t",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "step_cost_t-after-ramp.json").read_text())
    row = result["rows"][0]
    assert set(row["median_ms"]) == {"dense", "pdp", "pdp-tol", "pdp-eager", "gmp"}
    exact, tolerant = row["thresholds"]["pdp"], row["thresholds"]["pdp-tol"]
    assert exact["reused"] == 0 and exact["moved_by_counts"] == 0 and exact["computed"] > 0
    assert tolerant["computed"] + tolerant["reused"] + tolerant["moved_by_counts"] == exact["computed"]
    assert "PDP tolerance 1e-2" in (tmp_path / "step_cost_t-after-ramp.md").read_text()

"""2:4 Linear layers on sparse tensor cores only where measured faster; a clear refusal elsewhere."""

import pytest
import torch
from torch import nn

import pdprune
from pdprune.export.semi_structured import choose_sparse, is_2to4


def two_four_mlp(d: int = 64, hidden: int = 128) -> nn.Module:
    model = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))
    pruner = pdprune.prepare(
        model, pdprune.PruneConfig(pattern="2:4", schedule=pdprune.Schedule(1, warmup=0, ramp=0))
    )
    pruner.step()
    pruner.finalize()
    return model


def test_is_2to4_reads_groups_along_the_input_dimension():
    model = two_four_mlp()
    assert is_2to4(model[0].weight) and is_2to4(model[2].weight)
    dense = torch.ones(8, 8)
    assert not is_2to4(dense)
    three = torch.ones(4, 8)
    three[:, ::4] = 0  # three of every four kept
    assert not is_2to4(three)
    assert not is_2to4(torch.zeros(4, 6))  # 6 inputs do not split into groups of 4
    assert is_2to4(torch.zeros(4, 8))  # all zeros is 0:4, within 2:4


def test_the_sparse_kernel_is_chosen_only_when_measured_faster():
    assert choose_sparse(1.0, 0.5, 1.05) == (True, "sparse kernel 2.00x faster than dense")
    use, reason = choose_sparse(1.0, 1.2, 1.05)
    assert not use and "0.83x of dense" in reason
    assert not choose_sparse(1.0, 0.97, 1.05)[0]  # 1.03x is below the bar


def test_on_a_cpu_the_refusal_names_the_hardware_and_the_alternative():
    with pytest.raises(RuntimeError, match=r"only on CUDA GPUs.*save_sparse"):
        pdprune.accelerate_2to4(two_four_mlp(), torch.randn(4, 64))


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="needs a CUDA GPU with sparse tensor cores",
)
def test_on_a_gpu_layers_go_sparse_only_past_the_bar_and_outputs_hold():
    model = two_four_mlp(1024, 4096).half().cuda().eval()
    x = torch.randn(2048, 1024, device="cuda", dtype=torch.half)
    with torch.no_grad():
        expected = model(x)
    dense_weights = [model[0].weight.clone(), model[2].weight.clone()]
    kept = pdprune.accelerate_2to4(model, x, min_speedup=1e9)  # nothing can be a billion times faster
    assert len(kept) == 2 and not any(d.sparse for d in kept)
    assert torch.equal(model[0].weight, dense_weights[0]) and torch.equal(model[2].weight, dense_weights[1])
    chosen = pdprune.accelerate_2to4(model, x, min_speedup=1e-9)  # every layer the kernels accept
    assert all(d.sparse or "refused" in d.reason for d in chosen)
    with torch.no_grad():
        actual = model(x)
    assert float((actual - expected).abs().max() / expected.abs().max()) < 1e-2


def test_the_output_check_fails_on_nan_and_on_outputs_that_do_not_match_up():
    from pdprune.export.semi_structured import _worst_relative_error

    expected = torch.tensor([1.0, -2.0, 4.0])
    assert _worst_relative_error(expected, expected.clone()) == 0.0
    assert _worst_relative_error(expected, torch.tensor([1.0, -2.0, 4.4])) == pytest.approx(0.1)
    nan = _worst_relative_error(expected, torch.tensor([1.0, float("nan"), 4.0]))
    assert not nan <= 1.0  # NaN never passes a tolerance
    assert not _worst_relative_error((expected,), (expected[:2],)) <= 1.0
    assert not _worst_relative_error((expected, expected), (expected,)) <= 1.0

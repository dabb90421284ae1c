"""README's set-up commands and examples stay true: CI runs the README's test command, each example
runs as written (found by its name, see tests/test_docs.py), and the README stays short."""

import re
import warnings

import pytest
import torch
from torch import nn

from tests.test_docs import README, ROOT, run_example

MAX_README_BYTES = 12_000


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)]


def test_ci_runs_the_readme_test_command():
    blocks = _bash_blocks(README.read_text())
    assert len(blocks) >= 2, "README must open with the two set-up commands"
    assert blocks[0].endswith("pdprune demo")
    assert "pytest" in blocks[1]
    assert blocks[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_is_short_and_in_order():
    text = README.read_text()
    size = len(text.encode())
    assert size <= MAX_README_BYTES, (
        f"README.md is {size} bytes; keep it under {MAX_README_BYTES} (depth goes to docs/)"
    )
    headings = re.findall(
        r"^## (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL), flags=re.MULTILINE
    )
    assert headings == ["Set up", "Use it in your training loop", "Patterns", "Results", "Read more"], (
        headings
    )


def _my_model():
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))


def _loader(n: int = 64):
    xs = torch.randn(n, 10)
    return [(xs[i : i + 16], (xs[i : i + 16, :3]).argmax(1)) for i in range(0, n, 16)]


def _train(model, pruner, steps, x):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()


def test_readme_training_loop_and_resume_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {
        "MyModel": _my_model,
        "epochs": 3,
        "train_loader": _loader(),
        "loss_fn": nn.CrossEntropyLoss(),
    }
    run_example(README, "training-loop", namespace)
    report = namespace["report"]
    assert report.achieved_sparsity == pytest.approx(0.9, abs=0.01)
    assert (tmp_path / "pdprune-results" / "my-run" / "report.json").exists()
    stock = namespace["MyModel"]()
    stock.load_state_dict(
        torch.load("pruned.pt", weights_only=True)
    )  # the stock class takes the pruned weights

    # the resume example: save mid-run, then resume into a fresh model, optimizer and pruner
    model = namespace["MyModel"]()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pruner = namespace["pdprune"].prepare(model, namespace["config"])
    for x, y in namespace["train_loader"][:3]:
        namespace["loss_fn"](model(x), y).backward()
        optimizer.step()
        pruner.step()
    namespace.update(model=model, optimizer=optimizer, pruner=pruner)
    run_example(README, "resume", namespace)
    resumed = namespace["pruner"]
    assert resumed is not pruner and resumed.step_count == 3
    assert namespace["model"] is not model
    assert torch.equal(namespace["model"][0].weight, model[0].weight)
    # the resumed run continues exactly as the uninterrupted one
    for x, y in namespace["train_loader"][3:]:
        for m, o, p in ((model, optimizer, pruner), (namespace["model"], namespace["optimizer"], resumed)):
            o.zero_grad()
            namespace["loss_fn"](m(x), y).backward()
            o.step()
            p.step()
    assert torch.equal(namespace["model"][0].weight, model[0].weight)
    assert all(torch.equal(resumed.masks()[k], v) for k, v in pruner.masks().items())


def test_readme_unstructured_budgets_fix_the_overridden_layer_and_skip_the_excluded_one():
    import pdprune

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.body, self.head = nn.Linear(8, 32), nn.Linear(32, 256), nn.Linear(256, 4)

        def forward(self, x):
            return self.head(torch.relu(self.body(torch.relu(self.stem(x)))))

    torch.manual_seed(0)
    namespace = {"pdprune": pdprune, "steps": 10}
    run_example(README, "unstructured-budgets", namespace)
    assert namespace["config"].budget == "erk"
    model = Net()
    pruner = pdprune.prepare(model, namespace["config"])
    _train(model, pruner, 10, torch.randn(8, 8))
    report = pruner.finalize()
    layers = {layer.name: layer for layer in report.layers}
    assert set(layers) == {"stem.weight", "body.weight"}  # the head is excluded
    assert layers["stem.weight"].achieved_sparsity == pytest.approx(0.5)
    assert report.achieved_sparsity == pytest.approx(0.95, abs=0.001)
    assert bool((model.head.weight != 0).all())


def test_readme_nm_example_builds_a_2_4_run():
    import pdprune

    namespace = {"pdprune": pdprune, "steps": 10}
    run_example(README, "nm-2-4", namespace)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    pruner = pdprune.prepare(model, namespace["config"])
    _train(model, pruner, 10, torch.randn(4, 8))
    report = pruner.finalize()
    assert report.pattern == "2:4" and report.achieved_sparsity == 0.5
    assert bool(((model[0].weight != 0).view(16, 2, 4).sum(-1) == 2).all())


def test_readme_channel_example_shrinks_saves_and_loads(tmp_path, monkeypatch):
    import pdprune

    class MyModel(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    xs = torch.randn(16, 10)
    model = MyModel()
    namespace = {
        "pdprune": pdprune,
        "steps": 5,
        "model": model,
        "MyModel": MyModel,
        "train_loader": [(xs, None)],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # finalize() before the ramp ends: the example elides training
        run_example(README, "channels", namespace)
    assert model[0].out_features == 16 and model[2].in_features == 16  # half the FLOPs, a multiple of 8
    assert (tmp_path / "shrunk-model" / "plan.json").exists()
    small = namespace["small"].eval()
    model.eval()
    assert isinstance(small, MyModel) and torch.allclose(small(xs), model(xs), atol=1e-6)


def test_readme_export_example_round_trips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = nn.Linear(8, 4)
    with torch.no_grad():
        model.weight[:, :6] = 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_example(README, "export-sparse", {"model": model})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert (tmp_path / "model.sparse.safetensors").exists() and (tmp_path / "model.safetensors").exists()

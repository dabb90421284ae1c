"""README's set-up commands stay true: CI runs the README's test command, and the documented
example runs as written."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 2, "README must open with the two set-up commands"
    assert blocks[0].endswith("pdprune demo")
    assert "pytest" in blocks[1]
    assert blocks[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_python_examples_run_as_written(tmp_path, monkeypatch):
    import torch
    from torch import nn

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    xs = torch.randn(64, 10)
    namespace = {
        "MyModel": lambda: nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)),
        "epochs": 3,
        "train_loader": [(xs[i : i + 16], (xs[i : i + 16, :3]).argmax(1)) for i in range(0, 64, 16)],
        "loss_fn": nn.CrossEntropyLoss(),
    }
    exec(blocks[0], namespace)  # the training-loop example
    report = namespace["report"]
    assert report.achieved_sparsity == __import__("pytest").approx(0.9, abs=0.01)
    assert (tmp_path / "pdprune-results" / "my-run" / "report.json").exists()
    stock = namespace["MyModel"]()
    stock.load_state_dict(torch.load("pruned.pt", weights_only=True))

    # the checkpoint example: save mid-run, then resume into a fresh model in the same way
    model = namespace["MyModel"]()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pruner = namespace["pdprune"].prepare(model, namespace["config"])
    for x, y in namespace["train_loader"][:3]:
        namespace["loss_fn"](model(x), y).backward()
        optimizer.step()
        pruner.step()
    namespace.update(model=model, optimizer=optimizer, pruner=pruner)
    exec(blocks[1], namespace)
    resumed = namespace["pruner"]
    assert resumed is not pruner and resumed.step_count == 3
    assert namespace["model"] is not model
    assert torch.equal(namespace["model"][0].weight, model[0].weight)


def test_readme_nm_example_builds_a_2_4_run():
    import torch
    from torch import nn

    import pdprune

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    namespace = {"pdprune": pdprune, "steps": 10}
    exec(blocks[2], namespace)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    pruner = pdprune.prepare(model, namespace["config"])
    for _ in range(10):
        pruner.step()
    report = pruner.finalize()
    assert report.pattern == "2:4" and report.achieved_sparsity == 0.5
    assert bool(((model[0].weight != 0).view(16, 2, 4).sum(-1) == 2).all())


def test_readme_channel_example_shrinks_saves_and_loads(tmp_path, monkeypatch):
    import torch
    from torch import nn

    import pdprune

    class MyModel(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    xs = torch.randn(16, 10)
    model = MyModel()
    namespace = {"pdprune": pdprune, "steps": 5, "model": model, "MyModel": MyModel, "train_loader": [(xs, None)]}
    exec(blocks[3], namespace)
    assert model[0].out_features == 16 and model[2].in_features == 16
    small = namespace["small"].eval()
    model.eval()
    assert isinstance(small, MyModel) and torch.allclose(small(xs), model(xs), atol=1e-6)


def test_readme_declared_heads_example_prunes_whole_heads():
    import math

    import torch
    from torch import nn

    import pdprune

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.n_heads = 8
            self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = (p(x).view(b, t, self.n_heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
            mixed = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v
            return x + self.o(mixed.transpose(1, 2).reshape(b, t, -1))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(Attention())
            self.head = nn.Linear(32, 2)

        def forward(self, x):
            return self.head(self.blocks(x).mean(1))

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    namespace = {"pdprune": pdprune, "steps": 6}
    exec(blocks[4], namespace)
    model, x = Net(), torch.randn(3, 5, 32)
    pruner = pdprune.prepare(model, namespace["config"], example_inputs=x)
    assert pruner.groups["blocks.0.heads"].width == 4
    for _ in range(6):
        model(x).sum().backward()
        pruner.step()
    pruner.finalize()
    model.eval()
    masked = model(x)
    pruner.shrink()
    assert model.blocks[0].n_heads == 4 and model.blocks[0].q.out_features == 16
    assert torch.allclose(model(x), masked, atol=1e-5)


def test_readme_export_example_round_trips(tmp_path, monkeypatch):
    import torch
    from torch import nn

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    model = nn.Linear(8, 4)
    with torch.no_grad():
        model.weight[:, :6] = 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    namespace = {"model": model}
    exec(blocks[5], namespace)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert (tmp_path / "model.sparse.safetensors").exists() and (tmp_path / "model.safetensors").exists()

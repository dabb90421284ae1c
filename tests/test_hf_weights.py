"""Unstructured and N:M pruning of Hugging Face models as users bring them: GPT-2's Conv1D
projections, the LM head tied to the input embedding, and a model left in eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pdprune

transformers = pytest.importorskip("transformers")

VOCAB, WIDTH, CONTEXT = 64, 32, 16


def tiny_gpt2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=WIDTH, n_layer=2, n_head=2, n_inner=64
    )
    return transformers.GPT2LMHeadModel(config)


def token_batches(steps: int, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (4, CONTEXT), generator=generator) for _ in range(steps)]


def train(model: nn.Module, pruner: pdprune.Pruner, batches: list[torch.Tensor], train_mode: bool = True):
    model.train(train_mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for ids in batches:
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()


def conv1d_names(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]


def test_gpt2_conv1d_projections_are_pruned_by_default() -> None:
    model = tiny_gpt2()
    steps = 12
    config = pdprune.PruneConfig(sparsity=0.5, budget="uniform", schedule=pdprune.Schedule(steps, 0.0, 0.5))
    pruner = pdprune.prepare(model, config)
    names = {t.name for t in pruner.tensors}
    assert len(conv1d_names(model)) == 8
    assert set(conv1d_names(model)) <= names
    train(model, pruner, token_batches(steps))
    report = pruner.finalize()
    for layer in report.layers:
        assert layer.achieved_sparsity == pytest.approx(0.5, abs=1e-3), layer.name
    assert {layer.module_type for layer in report.layers} == {"Conv1D", "Linear"}


def test_gpt2_conv1d_two_of_four_runs_along_input_features() -> None:
    model = tiny_gpt2()
    steps = 8
    config = pdprune.PruneConfig(pattern="2:4", schedule=pdprune.Schedule(steps, 0.0, 0.5))
    pruner = pdprune.prepare(model, config)
    train(model, pruner, token_batches(steps))
    pruner.finalize()
    for name, module in model.named_modules():
        if type(module).__name__ != "Conv1D":
            continue
        weight = module.weight.detach()  # (in, out): groups run down the input dimension
        groups = weight.reshape(weight.shape[0] // 4, 4, weight.shape[1])
        assert torch.equal(groups.ne(0).sum(dim=1), torch.full_like(groups[:, 0], 2, dtype=torch.long)), name


def _relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


def test_tied_embedding_trains_with_the_mask_it_ends_with() -> None:
    """The LM head shares its weight with the input embedding: the lookup must see the same mask
    during training, so finalize() changes the embedding output no more than any pruned layer's."""
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    steps = 40
    config = pdprune.PruneConfig(sparsity=0.5, budget="uniform", schedule=pdprune.Schedule(steps, 0.0, 0.5))
    pruner = pdprune.prepare(model, config)
    (head,) = [t for t in pruner.tensors if t.name == "lm_head.weight"]
    assert "transformer.wte" in head.note

    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    watched = {
        "transformer.wte": model.transformer.wte,
        "transformer.h.1.mlp.c_fc": model.transformer.h[1].mlp.c_fc,
    }

    def recorder(name: str):
        def record(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen[name] = (args[0].detach().clone(), output.detach().clone())

        return record

    handles = [m.register_forward_hook(recorder(n)) for n, m in watched.items()]
    train(model, pruner, token_batches(steps))
    for h in handles:
        h.remove()
    report = pruner.finalize()
    assert "transformer.wte" in next(layer.note for layer in report.layers if layer.name == "lm_head.weight")

    with torch.no_grad():
        changes = {name: _relative_change(out, watched[name](x)) for name, (x, out) in seen.items()}
    embedding, other = changes["transformer.wte"], changes["transformer.h.1.mlp.c_fc"]
    # Dense lookups in training met by 50% zeros at finalize() would change the output by ~0.5.
    assert embedding < 0.05
    assert embedding <= 2 * other + 0.01, changes
    assert float(model.transformer.wte.weight.eq(0).float().mean()) == pytest.approx(0.5, abs=1e-3)


def test_tied_weight_keeps_one_mask_for_every_use_under_two_of_four() -> None:
    model = tiny_gpt2()
    config = pdprune.PruneConfig(pattern="2:4", schedule=pdprune.Schedule(4, 0.0, 0.5))
    pruner = pdprune.prepare(model, config)
    train(model, pruner, token_batches(4))
    pruner.finalize()
    weight = model.transformer.wte.weight.detach()  # (vocab, hidden): lm_head's input is hidden
    groups = weight.reshape(VOCAB, WIDTH // 4, 4)
    assert bool(groups.ne(0).sum(dim=2).eq(2).all())


def test_weight_tied_under_another_name_is_refused_with_the_way_out() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)
            self.scale = nn.Module()
            self.scale.table = self.proj.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    with pytest.raises(ValueError, match=r"scale\.table.*exclude=\['proj'\]"):
        pdprune.prepare(Odd(), pdprune.PruneConfig(sparsity=0.5, schedule=pdprune.Schedule(10)))


def test_model_left_in_eval_mode_trains_without_a_false_alarm() -> None:
    """from_pretrained returns a model in eval mode; a loop that never calls train() still trains
    with the masks (autograd is on), so step() must not claim the masks were bypassed."""
    model = tiny_gpt2()
    steps = 10
    config = pdprune.PruneConfig(sparsity=0.5, schedule=pdprune.Schedule(steps, 0.0, 0.5))
    pruner = pdprune.prepare(model, config)
    train(model, pruner, token_batches(steps), train_mode=False)
    report = pruner.finalize()
    assert report.achieved_sparsity == pytest.approx(0.5, abs=1e-3)


def test_updates_without_any_forward_that_can_train_still_raise() -> None:
    model = tiny_gpt2()
    config = pdprune.PruneConfig(sparsity=0.5, schedule=pdprune.Schedule(10, 0.0, 0.5))
    pruner = pdprune.prepare(model, config)
    train(model, pruner, token_batches(2))
    model.eval()
    with torch.no_grad():  # an evaluation pass: neither training mode nor autograd
        model(input_ids=token_batches(1)[0])
        model.lm_head.weight.add_(0.01)
    with pytest.raises(RuntimeError, match="masks were in force"):
        pruner.step()


def test_report_names_a_layer_type_left_out_that_holds_much_of_the_model() -> None:
    model = nn.Sequential(nn.Embedding(500, 32), nn.Linear(32, 8))
    pruner = pdprune.prepare(model, pdprune.PruneConfig(sparsity=0.5, schedule=pdprune.Schedule(4, 0.0, 0.5)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        model(torch.randint(0, 500, (8,))).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
    report = pruner.finalize()
    text = report.to_text()
    assert "not pruned: 1 Embedding layer(s), 16,000 parameters" in text
    assert report.to_dict()["unpruned_types"] == {"Embedding": {"layers": 1, "params": 16000}}
    # a small left-out layer is in the JSON but does not crowd the text
    small = nn.Sequential(nn.Embedding(4, 2), nn.Linear(2, 500))
    report = pdprune.prepare(small, pdprune.PruneConfig(sparsity=0.5, schedule=pdprune.Schedule(4))).report()
    assert "not pruned" not in report.to_text()
    assert report.to_dict()["unpruned_types"] == {"Embedding": {"layers": 1, "params": 8}}


def test_channel_pruning_takes_a_tokenizer_batch_and_says_why_the_hidden_size_stays_in_one_line() -> None:
    torch.manual_seed(0)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
        )
    )
    ids = torch.randint(0, 100, (2, 16))
    batch = transformers.BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    config = pdprune.PruneConfig(sparsity=0.5, pattern="channel", schedule=pdprune.Schedule(10, ramp=0.2))
    pruner = pdprune.prepare(bert, config, example_inputs=batch)
    assert pruner.example_spec["dict"].keys() == {"input_ids", "attention_mask"}
    (hidden,) = [why for why in pruner.skipped.values() if "LayerNorm" in why]
    assert hidden.count("normalises across channels") == 1 and "(5 layers:" in hidden
    assert hidden.count("cannot be channel-pruned") == 1 and "(3 layers:" in hidden


def test_channel_tracing_of_a_decoder_runs_without_its_key_value_cache() -> None:
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=32,
        )
    )
    assert llama.config.use_cache
    ids = torch.randint(0, 64, (2, 16))
    config = pdprune.PruneConfig(sparsity=0.5, pattern="channel", schedule=pdprune.Schedule(10, ramp=0.2))
    pruner = pdprune.prepare(llama, config, example_inputs=ids)
    # the cache's keys and values would otherwise count as model outputs, pinning k_proj and v_proj
    assert not any("model output" in why for name, why in pruner.skipped.items() if "_proj" in name)
    mlp = {m.name for g in pruner.groups.values() for m in g.members}
    assert {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"} <= mlp

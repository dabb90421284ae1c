"""Channel-shrunk Hugging Face models saved as folders that load back through the HF API."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import pdprune

transformers = pytest.importorskip("transformers")

import pdprune.hf  # noqa: E402


def bert_config(layers: int) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=128
    )


def shrunk(model: torch.nn.Module, inputs: dict[str, torch.Tensor], heads: bool) -> pdprune.ChannelPruner:
    config = pdprune.PruneConfig(
        sparsity=0.5, pattern=pdprune.Channels(heads=heads), schedule=pdprune.Schedule(10, ramp=0.2)
    )
    pruner = pdprune.prepare(model, config, example_inputs=inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # finalize() before the ramp ends: no training here
        pruner.finalize()
    pruner.shrink()
    return pruner


def test_one_width_for_every_layer_goes_into_the_config_and_auto_model_loads_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = transformers.BertModel(bert_config(layers=1)).eval()
    ids = torch.randint(0, 100, (2, 16))
    pruner = shrunk(model, {"input_ids": ids}, heads=False)
    width = model.encoder.layer[0].intermediate.dense.out_features
    assert width < 128
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state

    pdprune.hf.save_pretrained(pruner, tmp_path / "bert")
    assert json.loads((tmp_path / "bert" / "config.json").read_text())["intermediate_size"] == width
    assert json.loads((tmp_path / "bert" / "pdprune.json").read_text())["shapes_from"] == "config"
    for loaded in (
        transformers.AutoModel.from_pretrained(tmp_path / "bert"),
        pdprune.hf.from_pretrained(tmp_path / "bert"),
    ):
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=ids).last_hidden_state, expected)


def test_heads_and_per_layer_widths_reload_through_pdprune_and_never_silently_through_auto(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(bert_config(layers=2)).eval()
    ids = torch.randint(0, 100, (2, 16))
    pruner = shrunk(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, heads=True)
    heads = [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer]
    assert all(h < 4 for h in heads)
    with torch.no_grad():
        expected = model(input_ids=ids).logits

    pdprune.hf.save_pretrained(pruner, tmp_path / "bert")
    assert json.loads((tmp_path / "bert" / "pdprune.json").read_text())["shapes_from"] == "plan"
    loaded = pdprune.hf.from_pretrained(tmp_path / "bert")
    assert type(loaded) is transformers.BertForSequenceClassification and not loaded.training
    assert [layer.attention.self.num_attention_heads for layer in loaded.bert.encoder.layer] == heads
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, expected)
    with pytest.raises(RuntimeError, match="mismatch"):  # the config cannot say it: an error, not a re-init
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert")


def test_a_shrunk_decoder_generates_the_same_text_after_reloading(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        dense_shapes = model(input_ids=ids).logits.shape
    pruner = shrunk(model, {"input_ids": ids}, heads=True)
    assert all(layer.mlp.gate_proj.out_features < 128 for layer in model.model.layers)
    # heads go whole, from q, k and v together, and o_proj's inputs follow
    assert sum(layer.self_attn.q_proj.out_features for layer in model.model.layers) < 2 * 64
    for layer in model.model.layers:
        attention = layer.self_attn
        assert attention.q_proj.out_features == attention.k_proj.out_features == attention.o_proj.in_features
        assert attention.q_proj.out_features % attention.head_dim == 0
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == dense_shapes
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)

    pdprune.hf.save_pretrained(pruner, tmp_path / "llama")
    loaded = pdprune.hf.from_pretrained(tmp_path / "llama")
    assert torch.equal(loaded.generate(ids, max_new_tokens=6, do_sample=False), expected)


def test_only_a_shrunk_hugging_face_model_is_saved(tmp_path: Path) -> None:
    model = transformers.BertModel(bert_config(layers=1))
    ids = torch.randint(0, 100, (2, 16))
    config = pdprune.PruneConfig(sparsity=0.5, pattern="channel", schedule=pdprune.Schedule(10))
    with pytest.raises(RuntimeError, match="not shrunk yet"):
        pdprune.hf.save_pretrained(
            pdprune.prepare(model, config, example_inputs={"input_ids": ids}), tmp_path
        )
    unstructured = pdprune.prepare(
        torch.nn.Linear(4, 4), pdprune.PruneConfig(sparsity=0.5, schedule=pdprune.Schedule(4))
    )
    with pytest.raises(TypeError, match=r"model\.save_pretrained"):
        pdprune.hf.save_pretrained(unstructured, tmp_path)


def test_grouped_query_attention_is_left_whole_quickly_with_the_reason_and_its_mlp_is_pruned() -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 64, (2, 8))
    channel = pdprune.PruneConfig(sparsity=0.5, pattern="channel", schedule=pdprune.Schedule(10, ramp=0.2))
    # tracing through repeated keys and values once ran for more than ten minutes here
    pruner = pdprune.prepare(model, channel, example_inputs={"input_ids": ids})
    reasons = [why for name, why in pruner.skipped.items() if name.endswith("self_attn.heads")]
    assert len(reasons) == 2 and all(
        "grouped-query attention (4 query heads share 2" in why for why in reasons
    )
    members = {m.name for group in pruner.groups.values() for m in group.members}
    assert {"model.layers.0.mlp.gate_proj", "model.layers.1.mlp.up_proj"} <= members
    assert not any("_proj" in name and "mlp" not in name for name in members)


def test_a_decoder_with_the_same_heads_left_in_every_layer_reloads_with_auto_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (1, 8))
    pruner = shrunk(model, {"input_ids": ids}, heads=True)
    heads = model.model.layers[0].self_attn.q_proj.out_features // 16
    assert heads < 4
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    pdprune.hf.save_pretrained(pruner, tmp_path / "llama")
    saved = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert saved["num_attention_heads"] == saved["num_key_value_heads"] == heads and saved["head_dim"] == 16
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    assert torch.equal(loaded.generate(ids, max_new_tokens=6, do_sample=False), expected)

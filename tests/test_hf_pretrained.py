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
    pruner = shrunk(model, {"input_ids": ids}, heads=True)
    assert all(layer.mlp.gate_proj.out_features < 128 for layer in model.model.layers)
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

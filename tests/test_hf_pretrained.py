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


def llama(query_heads: int, key_heads: int, layers: int = 2, attention: str = "sdpa") -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=query_heads,
        num_key_value_heads=key_heads,
        max_position_embeddings=32,
        attn_implementation=attention,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_grouped_query_attention_loses_whole_key_value_heads_with_the_query_heads_that_share_them(
    tmp_path: Path, attention: str
) -> None:
    torch.manual_seed(0)
    model = llama(query_heads=8, key_heads=4, attention=attention)
    ids = torch.randint(0, 64, (2, 8))
    # tracing through repeated keys and values once ran for more than ten minutes on this model
    pruner = shrunk(model, {"input_ids": ids}, heads=True)
    heads = pruner.groups["model.layers.0.self_attn.heads"]
    assert (heads.channels, heads.width) == (4, 8)  # a unit: one key/value head and its 2 query heads
    assert {"model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"} <= set(pruner.groups)
    for layer in model.model.layers:
        attn = layer.self_attn
        assert attn.k_proj.out_features == attn.v_proj.out_features == 2 * 8
        assert attn.q_proj.out_features == attn.o_proj.in_features == 4 * 8
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)

    pdprune.hf.save_pretrained(pruner, tmp_path / "gqa")
    saved = json.loads((tmp_path / "gqa" / "config.json").read_text())
    assert (saved["num_attention_heads"], saved["num_key_value_heads"]) == (4, 2)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gqa")
    assert torch.equal(loaded.generate(ids, max_new_tokens=6, do_sample=False), expected)


@pytest.mark.parametrize("family", ["Qwen2", "Mistral", "Qwen3"])
def test_llama_family_decoders_lose_grouped_query_heads_and_mlp_rows_and_reload(
    tmp_path: Path, family: str
) -> None:
    # Qwen2 has biases on q, k and v; Qwen3 normalises each head's queries and keys
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = getattr(transformers, f"{family}ForCausalLM")(config).eval()
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    pruner = shrunk(model, {"input_ids": ids}, heads=True)
    assert sorted(pruner.groups) == sorted(
        f"model.layers.{i}.{g}" for i in (0, 1) for g in ("mlp.up_proj", "self_attn.heads")
    )
    attention = model.model.layers[1].self_attn
    assert attention.k_proj.out_features == attention.head_dim  # one key/value head of two
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    assert not torch.allclose(expected, dense)  # heads and rows with weights in them are gone
    pdprune.hf.save_pretrained(pruner, tmp_path / family)
    with torch.no_grad():
        loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / family)(input_ids=ids).logits
    assert torch.equal(loaded, expected)


def test_grouped_query_heads_are_scored_over_every_query_head_that_shares_them() -> None:
    torch.manual_seed(0)
    model = llama(query_heads=4, key_heads=2, layers=1)
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight.mul_(0.01)
        attn.q_proj.weight[48:64] = 1.0  # query head 3 reads key/value head 1: that unit must win
    pruner = shrunk(model, {"input_ids": torch.randint(0, 64, (1, 8))}, heads=True)
    assert pruner.masks()["model.layers.0.self_attn.heads"].tolist() == [False, True]
    assert bool(attn.q_proj.weight[16:32].eq(1.0).all())  # what was query head 3 is now head 1


def test_gpt2_heads_in_the_fused_projection_and_mlp_rows_shrink_and_reload(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 64, (2, 8))
    pruner = shrunk(model, {"input_ids": ids}, heads=True)
    assert set(pruner.groups) == {f"transformer.h.{i}.{g}" for i in (0, 1) for g in ("attn.heads", "mlp")}
    for block in model.transformer.h:
        assert block.attn.c_attn.weight.shape == (64, 3 * 2 * 16) and block.attn.c_attn.nf == 96
        assert block.attn.c_proj.weight.shape == (32, 64) and block.attn.split_size == 32
        assert block.mlp.c_fc.nf == block.mlp.c_proj.nx == 128
    layers = {layer.name: layer for layer in pruner.report().layers}
    assert layers["transformer.h.0.attn.c_attn"].params == (64 * 192 + 192, 64 * 96 + 96)
    assert layers["transformer.h.0.mlp.c_proj"].macs == (2 * 8 * 64 * 256, 2 * 8 * 64 * 128)
    expected = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)

    pdprune.hf.save_pretrained(pruner, tmp_path / "gpt2")  # GPT-2's config cannot say fewer heads of 16
    assert json.loads((tmp_path / "gpt2" / "pdprune.json").read_text())["shapes_from"] == "plan"
    loaded = pdprune.hf.from_pretrained(tmp_path / "gpt2")
    assert torch.equal(loaded.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0), expected)


def test_gpt2_mlp_rows_alone_go_into_the_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 64, (2, 8))
    pruner = shrunk(model, {"input_ids": ids}, heads=False)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    pdprune.hf.save_pretrained(pruner, tmp_path / "gpt2")
    assert json.loads((tmp_path / "gpt2" / "config.json").read_text())["n_inner"] == 128
    with torch.no_grad():
        got = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")(input_ids=ids).logits
    assert torch.equal(got, expected)


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

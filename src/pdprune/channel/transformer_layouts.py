"""Channel groups in the layouts of Hugging Face transformers, which tracing cannot find or remove.

Attention heads are channels split by a reshape, so tracing sees no group in them; GPT-2 keeps
its projections in transformers' ``Conv1D``, which Torch-Pruning does not know; and the search
through grouped-query attention's repeated keys and values does not finish. Each layout is
recognised by its module names and shapes and described as a :class:`~pdprune.ChannelGroupSpec`
that pdprune checks, like any declared group, by removing a few units from a copy of the model.
Nothing here imports transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from pdprune.patterns.specs import ChannelGroupSpec, is_transformers_conv1d

__all__ = ["Layouts", "transformer_layouts"]


@dataclass
class Layouts:
    """What pdprune found in a model's transformer layers.

    ``heads``: one group of attention heads per attention module (pruned with
    ``Channels(heads=True)``). ``channels``: groups of plain channels tracing cannot follow
    (GPT-2's MLP rows). ``reasons``: attention modules left whole, and why. ``untraced``: the
    layers the dependency search must not follow (it would hang or cannot prune them).
    """

    heads: list[ChannelGroupSpec] = field(default_factory=list)
    channels: list[ChannelGroupSpec] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    untraced: list[nn.Module] = field(default_factory=list)


def transformer_layouts(model: nn.Module) -> Layouts:
    """The head and channel groups of BERT-family, Llama-family and GPT-2 layers in ``model``."""
    found = Layouts()
    modules = dict(model.named_modules())
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        _bert_attention(found, modules, name, prefix, module)
        _decoder_attention(found, name, prefix, module)
        _gpt2_attention(found, modules, name, prefix, module)
        _gpt2_mlp(found, name, prefix, module)
    return found


def _bert_attention(
    found: Layouts, modules: dict[str, nn.Module], name: str, prefix: str, module: nn.Module
) -> None:
    """BERT's layout: Linear ``query``/``key``/``value`` with ``num_attention_heads`` and
    ``attention_head_size``, whose parent's ``output.dense`` takes the heads' outputs."""
    projections = [getattr(module, p, None) for p in ("query", "key", "value")]
    heads, size = getattr(module, "num_attention_heads", None), getattr(module, "attention_head_size", None)
    if not all(isinstance(p, nn.Linear) for p in projections) or not (
        isinstance(heads, int) and isinstance(size, int)
    ):
        return
    parent_name = name.rpartition(".")[0]
    dense = getattr(getattr(modules.get(parent_name), "output", None), "dense", None)
    channels = heads * size
    if not isinstance(dense, nn.Linear) or dense.in_features != channels:
        return
    if any(p.out_features != channels for p in projections):  # type: ignore[union-attr]
        return
    counts = {f"{prefix}num_attention_heads": "units"}
    if isinstance(getattr(module, "all_head_size", None), int):
        counts[f"{prefix}all_head_size"] = "channels"
    found.heads.append(
        ChannelGroupSpec(
            name=name,
            producers=tuple(f"{prefix}{p}" for p in ("query", "key", "value")),
            consumers=(f"{parent_name}.output.dense" if parent_name else "output.dense",),
            units=heads,
            counts=counts,
        )
    )


_DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _decoder_attention(found: Layouts, name: str, prefix: str, module: nn.Module) -> None:
    """The Llama family's layout (Llama, Mistral, Qwen2): Linear ``q_proj``/``k_proj``/``v_proj``/
    ``o_proj`` and ``head_dim``, head counts left to reshapes. Under grouped-query attention a
    unit is one key/value head with the query heads that share it (query head i reads key/value
    head i // (query heads / key/value heads)), so every key/value head keeps the same number
    of query heads, as the model's repeat of keys and values requires."""
    layers = [getattr(module, p, None) for p in _DECODER_PROJECTIONS]
    head_dim = getattr(module, "head_dim", None)
    if not all(isinstance(layer, nn.Linear) for layer in layers) or not isinstance(head_dim, int):
        return
    q, k, v, o = layers
    found.untraced += layers  # type: ignore[arg-type]
    group = f"{prefix}heads"
    if q.out_features % head_dim or k.out_features % head_dim or v.out_features != k.out_features:  # type: ignore[union-attr]
        found.reasons[group] = f"its projections are not whole heads of {head_dim} channels"
        return
    heads, key_heads = q.out_features // head_dim, k.out_features // head_dim  # type: ignore[union-attr]
    if heads % key_heads or o.in_features != q.out_features:  # type: ignore[union-attr]
        found.reasons[group] = (
            f"{heads} query heads do not share {key_heads} key/value heads evenly, or o_proj does not take "
            "every query head"
        )
        return
    shared = heads // key_heads
    found.heads.append(
        ChannelGroupSpec(
            name=group,
            producers=tuple(f"{prefix}{p}" for p in _DECODER_PROJECTIONS[:3]),
            consumers=(f"{prefix}o_proj",),
            units=key_heads,
            repeats={f"{prefix}q_proj": shared, f"{prefix}o_proj": shared} if shared > 1 else {},
        )
    )


def _gpt2_attention(
    found: Layouts, modules: dict[str, nn.Module], name: str, prefix: str, module: nn.Module
) -> None:
    """GPT-2's layout: one ``Conv1D`` ``c_attn`` holding q, k and v end to end, split by
    ``split_size`` and reshaped into heads of ``head_dim``, then a ``Conv1D`` ``c_proj``."""
    fused, out = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    if not (_is_conv1d(fused) and _is_conv1d(out)):
        return
    found.untraced += [fused, out]
    heads, head_dim, split = (getattr(module, a, None) for a in ("num_heads", "head_dim", "split_size"))
    if not all(isinstance(v, int) for v in (heads, head_dim, split)):
        return
    group = f"{prefix}heads"
    if getattr(module, "is_cross_attention", False) or isinstance(getattr(module, "q_attn", None), nn.Module):
        found.reasons[group] = "cross-attention: pdprune removes the heads of self-attention only"
        return
    if heads * head_dim != split or fused.nf != 3 * split or out.nx != split:  # type: ignore[operator]
        found.reasons[group] = f"c_attn is not q, k and v of {heads} heads of {head_dim} channels end to end"
        return
    found.heads.append(
        ChannelGroupSpec(
            name=group,
            producers=(f"{prefix}c_attn",),
            consumers=(f"{prefix}c_proj",),
            units=heads,
            counts={f"{prefix}num_heads": "units", f"{prefix}split_size": "channels"},
            stacked={f"{prefix}c_attn": 3},
        )
    )


def _gpt2_mlp(found: Layouts, name: str, prefix: str, module: nn.Module) -> None:
    """GPT-2's MLP: ``Conv1D`` ``c_fc``, an elementwise activation, ``Conv1D`` ``c_proj``."""
    up, down = getattr(module, "c_fc", None), getattr(module, "c_proj", None)
    if not (_is_conv1d(up) and _is_conv1d(down)):
        return
    found.untraced += [up, down]
    if up.nf != down.nx:
        return
    found.channels.append(
        ChannelGroupSpec(name=name, producers=(f"{prefix}c_fc",), consumers=(f"{prefix}c_proj",))
    )


def _is_conv1d(module: object) -> bool:
    return isinstance(module, nn.Module) and is_transformers_conv1d(module)

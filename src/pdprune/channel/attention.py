"""Attention heads of ``nn.MultiheadAttention`` as channel groups, and their physical removal.

PyTorch's attention ties its inner width (heads x head_dim) to ``embed_dim``, the width of its
input and output, so it cannot run with fewer heads. Removing heads therefore turns the module,
in place, into :class:`HeadPrunedMultiheadAttention`: a subclass (``isinstance`` checks still
hold, parameter names and state-dict keys are unchanged) whose forward runs the kept heads only,
with q, k and v rows and the output projection's columns of the removed heads gone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdprune.channel.declared import HeadGroup
from pdprune.channel.groups import ChannelMember, Removal

__all__ = [
    "HeadPrunedMultiheadAttention",
    "MHAHeadGroup",
    "mha_head_groups",
    "mha_head_problem",
    "remove_mha_heads",
]


@dataclass
class MHAHeadGroup(HeadGroup):
    """The heads of one ``nn.MultiheadAttention``: removal turns the module into
    :class:`HeadPrunedMultiheadAttention` and is recorded as ``[name, "heads", head indices]``."""

    def remove(
        self, units: list[int], modules: dict[str, nn.Module], graph: Any
    ) -> tuple[list[Removal], dict[str, int]]:
        if not units:
            return [], {}
        remove_mha_heads(modules[self.name], sorted(units))  # type: ignore[arg-type]
        return [[self.name, "heads", sorted(units)]], {}


def mha_head_problem(module: nn.MultiheadAttention) -> str | None:
    """Why the heads of ``module`` cannot be pruned, or None when they can."""
    if not module._qkv_same_embed_dim and not isinstance(module, HeadPrunedMultiheadAttention):
        return "its key/value widths differ from embed_dim (separate q/k/v weights)"
    if module.bias_k is not None or module.add_zero_attn:
        return "add_bias_kv / add_zero_attn are not supported for head pruning"
    if module.num_heads < 2:
        return "a single head cannot be pruned"
    return None


def mha_head_groups(
    model: nn.Module, keep_module: Callable[[nn.Module, str], bool], exclude: Sequence[str]
) -> tuple[list[MHAHeadGroup], dict[str, str]]:
    """One group of heads per ``nn.MultiheadAttention`` in ``model``, and why any is left alone.

    A head is one unit: its q, k and v rows of ``in_proj_weight`` (and bias) are masked and scored
    together, and the output projection's columns follow. The filter and ``exclude`` see the
    attention's output projection (a Linear, which the default filter accepts)."""
    groups: list[MHAHeadGroup] = []
    reasons: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.MultiheadAttention):
            continue
        out_name = f"{name}.out_proj" if name else "out_proj"
        problem = mha_head_problem(module)
        if problem is None and not keep_module(module.out_proj, out_name):
            problem = f"{out_name} is not selected by the filter"
        if problem is None and any(re.search(p, n) for p in exclude for n in (name, out_name)):
            problem = f"{name} is excluded"
        if problem is not None:
            reasons[name] = problem
            continue
        member = ChannelMember(
            name, module, 0, True, weight_name="in_proj_weight", bias_name="in_proj_bias", fold=3
        )
        groups.append(
            MHAHeadGroup(
                name=name,
                channels=module.num_heads,
                members=[member],
                consumers={out_name: module.head_dim},
                root=module,
                root_fn=None,
                width=module.head_dim,
            )
        )
    return groups, reasons


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with ``num_heads`` of its ``original_num_heads`` heads left.

    ``in_proj_weight`` holds the kept heads' q, k and v rows (3 x num_heads x head_dim), the
    output projection their columns; ``embed_dim`` is still the input and output width. The
    forward takes the same arguments as the parent's. A per-head ``attn_mask`` of shape
    (batch x original_num_heads, L, S) is narrowed to the kept heads; attention weights, when
    asked for, cover the kept heads only.
    """

    kept_heads: tuple[int, ...]
    original_num_heads: int

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention does)"
            )
        batched = query.dim() == 3
        if not batched:  # (L, E): one sequence
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, target, source = query.shape[0], query.shape[1], key.shape[1]
        heads, head_dim = self.num_heads, self.head_dim
        inner = heads * head_dim
        weight, bias = self.in_proj_weight, self.in_proj_bias
        projected = []
        for index, tensor in enumerate((query, key, value)):
            rows = slice(index * inner, (index + 1) * inner)
            out = F.linear(tensor, weight[rows], bias[rows] if bias is not None else None)
            projected.append(out.view(batch, tensor.shape[1], heads, head_dim).transpose(1, 2))
        q, k, v = projected
        mask = self._merged_mask(attn_mask, key_padding_mask, batch, target, source, q.dtype)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(-1)
            attended = F.dropout(weights, dropout) @ v if dropout > 0 else weights @ v
        else:
            weights = None
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = F.linear(
            attended.transpose(1, 2).reshape(batch, target, inner), self.out_proj.weight, self.out_proj.bias
        )
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(1)
            if not batched:
                weights = weights.squeeze(0)
        return out, weights

    def _merged_mask(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        batch: int,
        target: int,
        source: int,
        dtype: torch.dtype,
    ) -> Tensor | None:
        """One additive float mask broadcastable to (batch, heads, target, source)."""
        merged = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:
                if mask.shape[0] != batch * self.original_num_heads:
                    raise RuntimeError(
                        f"a 3-D attn_mask needs batch x original_num_heads = "
                        f"{batch * self.original_num_heads} masks, got {mask.shape[0]}"
                    )
                mask = mask.view(batch, self.original_num_heads, target, source)[:, list(self.kept_heads)]
            merged = mask
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).view(batch, 1, 1, source)
            merged = padding if merged is None else merged + padding
        return merged


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True: may not attend) as -inf/0, a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def remove_mha_heads(module: nn.MultiheadAttention, removed: list[int]) -> None:
    """Remove the heads ``removed`` (indices among the module's current heads) in place."""
    problem = mha_head_problem(module) if not isinstance(module, HeadPrunedMultiheadAttention) else None
    if problem:
        raise ValueError(f"cannot remove heads of this attention module: {problem}")
    current = module.num_heads
    kept_now = [h for h in range(current) if h not in set(removed)]
    if not kept_now:
        raise ValueError(
            "removing every head of an attention module would cut the model in two; keep at least one"
        )
    if any(not 0 <= h < current for h in removed):
        raise ValueError(f"head indices must be in [0, {current}), got {sorted(removed)}")
    head_dim = module.head_dim
    original = getattr(module, "kept_heads", tuple(range(current)))
    rows = [
        block * current * head_dim + h * head_dim + i
        for block in range(3)
        for h in kept_now
        for i in range(head_dim)
    ]
    columns = [h * head_dim + i for h in kept_now for i in range(head_dim)]
    with torch.no_grad():
        module.in_proj_weight = nn.Parameter(module.in_proj_weight[rows].clone())
        if module.in_proj_bias is not None:
            module.in_proj_bias = nn.Parameter(module.in_proj_bias[rows].clone())
        out_proj = module.out_proj
        out_proj.weight = nn.Parameter(out_proj.weight[:, columns].clone())
        out_proj.in_features = len(columns)
    module.original_num_heads = getattr(module, "original_num_heads", current)  # type: ignore[assignment]
    module.kept_heads = tuple(original[h] for h in kept_now)  # type: ignore[assignment]
    module.num_heads = len(kept_now)
    module._qkv_same_embed_dim = (
        False  # keeps nn.Transformer*'s fused fast paths off: they assume a square in_proj
    )
    module.__class__ = HeadPrunedMultiheadAttention

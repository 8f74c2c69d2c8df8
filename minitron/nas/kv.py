"""Fewer (or more) K/V heads in one attention layer, each new head the mean of its parents."""

from __future__ import annotations

import torch
from torch import nn

from minitron.errors import MinitronError
from minitron.modeling.modeling import DeciLMAttention
from minitron.nas.blocks import build_like, nas_layer, set_attention


def mean_kv_heads(weight: torch.Tensor, num_heads: int, old_group: int, new_group: int):
    """K or V projection rows for a new grouping of query heads, by averaging parents.

    Query head ``h`` used parent K/V head ``h // old_group``; new K/V head ``j`` serves
    query heads ``j*new_group .. (j+1)*new_group - 1`` and starts as the mean, over those
    query heads, of the parent head each used (Puzzle's initialisation):

    - ``new_group`` a multiple of ``old_group`` (fewer K/V heads): the plain mean of
      ``new_group // old_group`` parent heads;
    - ``new_group`` dividing ``old_group`` (more K/V heads, e.g. 4 -> 2 query heads
      per K/V head): all query heads of a new group used the same parent, whose copy
      (the mean of equal rows, exact up to float rounding) it gets, so the layer
      computes the same function (lossless);
    - neither (e.g. 6 -> 4 of 12 heads): a new head can serve query heads of two
      parents and is their mean weighted by query heads (``(p0 + p0 + p1 + p1) / 4``
      for the middle head of that example), so the layer changes even though every
      group got smaller.

    Args:
        weight: ``[old_kv * head_dim, ...]`` projection weight (or bias) rows.
        num_heads: Query heads of the layer.
        old_group: Query heads per K/V head now.
        new_group: Query heads per K/V head wanted.

    Returns:
        ``[num_heads // new_group * head_dim, ...]`` new rows (a new tensor).
    """
    old_kv, new_kv = num_heads // old_group, num_heads // new_group
    head_dim = weight.shape[0] // old_kv
    heads = weight.reshape(old_kv, head_dim, *weight.shape[1:])  # [old_kv, hd, ...]
    parent = torch.arange(num_heads, device=weight.device) // old_group  # [H]
    per_query = heads[parent]  # [H, hd, ...]
    grouped = per_query.reshape(new_kv, new_group, head_dim, *weight.shape[1:])
    mean = grouped.float().mean(dim=1).to(weight.dtype)  # [new_kv, hd, ...]
    return mean.reshape(new_kv * head_dim, *weight.shape[1:])


def reduce_kv_heads(model: nn.Module, layer: int, n_heads_in_group: int) -> None:
    """Give attention layer ``layer`` ``heads // n_heads_in_group`` K/V heads. In place.

    Each new K/V head is the mean of the parent heads its query heads used
    (``mean_kv_heads``); queries and the output projection are kept as they are. The
    layer's function is unchanged only when the new group size divides the old one
    (each new head then copies one parent); any other change averages heads. No
    calibration data is needed. ``model.config.block_configs[layer]`` is updated.

    Raises:
        MinitronError: If the layer has no softmax attention or the group size does not
            divide the number of attention heads.
    """
    target = nas_layer(model, layer)
    config = model.config
    if target.attention_kind != "attention":
        kind = target.attention_kind
        raise MinitronError(f"layer {layer}: cannot set KV heads of {kind} attention")
    heads = config.num_attention_heads
    if not isinstance(n_heads_in_group, int) or n_heads_in_group < 1 or heads % n_heads_in_group:
        raise MinitronError(
            f"layer {layer}: n_heads_in_group {n_heads_in_group} does not divide {heads} heads"
        )
    old = target.self_attn
    old_group = config.block_configs[layer].attention.n_heads_in_group
    new = build_like(lambda: DeciLMAttention(config, layer, heads // n_heads_in_group),
                     old.q_proj.weight)  # fmt: skip
    new.q_proj, new.o_proj = old.q_proj, old.o_proj
    with torch.no_grad():
        for name in ("k_proj", "v_proj"):
            src, dst = getattr(old, name), getattr(new, name)
            dst.weight.copy_(mean_kv_heads(src.weight, heads, old_group, n_heads_in_group))
            if src.bias is not None:
                dst.bias.copy_(mean_kv_heads(src.bias, heads, old_group, n_heads_in_group))
    new.train(old.training)
    set_attention(model, layer, new, n_heads_in_group=n_heads_in_group)

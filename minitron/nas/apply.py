"""Apply a whole list of per-layer block configs to a nemotron-nas model.

All edits are checked before any is made. The calibration statistics every edit needs
(channel activity for narrower FFNs, normal equations for linear sub-blocks) are
gathered from the unedited parent with hooks, in one forward pass over the calibration
batches or, under a memory budget, in several (``minitron.nas.collect``); then each
layer is edited. Every layer's edit is thus initialised from the parent's own
activations, as in Puzzle's blockwise setup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from minitron.errors import MinitronError
from minitron.modeling import BlockConfig
from minitron.nas.blocks import attention_no_op, ffn_no_op, nas_layer
from minitron.nas.calibrate import RIDGE, SolvedFit
from minitron.nas.collect import Calibration, CalibrationMemory, collect_statistics
from minitron.nas.ffn import resize_ffn
from minitron.nas.kv import reduce_kv_heads
from minitron.nas.linear import set_linear_attention, set_linear_ffn

KV_INIT = "mean of the parent K/V heads"
FFN_INIT = "channels with the largest mean |act(gate)*up| on calibration data"
LINEAR_INIT = "least squares on calibration activations (norm(x) -> sub-block output)"


@dataclass(frozen=True)
class Edit:
    """What to do to one layer: ``attention`` / ``ffn`` are keep, kv, resize, linear, no_op."""

    layer: int
    attention: str
    ffn: str
    block: BlockConfig


def plan_edits(config: Any, blocks: Sequence[BlockConfig | dict]) -> list[Edit]:
    """Check ``blocks`` against the model's current blocks and name each edit.

    Raises:
        MinitronError: On a wrong number of blocks, a group size that does not divide
            the heads, or an edit that has nothing to start from (softmax attention or
            a SwiGLU FFN from a linear / no_op one, a linear map fitted to a no_op).
    """
    if len(blocks) != config.num_hidden_layers:
        raise MinitronError(
            f"{len(blocks)} block configs for a model with {config.num_hidden_layers} layers"
        )
    edits = []
    for i, (old, raw) in enumerate(zip(config.block_configs, blocks, strict=True)):
        new = BlockConfig.from_dict(raw, f"block_configs[{i}]")
        group = new.attention.n_heads_in_group
        if new.attention.has_heads and config.num_attention_heads % group:
            raise MinitronError(
                f"layer {i}: n_heads_in_group {group} does not divide "
                f"{config.num_attention_heads} attention heads"
            )
        attention = _attention_edit(i, old.attention, new.attention)
        ffn = _ffn_edit(i, old.ffn, new.ffn)
        edits.append(Edit(i, attention, ffn, new))
    return edits


def _attention_edit(layer: int, old, new) -> str:
    if new.kind == old.kind and (not new.has_heads or new.n_heads_in_group == old.n_heads_in_group):
        return "keep"
    if new.kind == "no_op":
        return "no_op"
    if old.kind == "no_op" or (new.has_heads and not old.has_heads):
        raise MinitronError(f"layer {layer}: cannot make {new.kind} attention from {old.kind}")
    return "kv" if new.has_heads else "linear"


def _ffn_edit(layer: int, old, new) -> str:
    if new.kind == old.kind and (not new.has_mlp or new.ffn_mult == old.ffn_mult):
        return "keep"
    if new.kind == "no_op":
        return "no_op"
    if old.kind == "no_op" or (new.has_mlp and not old.has_mlp):
        raise MinitronError(f"layer {layer}: cannot make a {new.kind} FFN from {old.kind}")
    return "resize" if new.has_mlp else "linear"


def apply_block_configs(
    model: nn.Module,
    blocks: Sequence[BlockConfig | dict],
    batches: Sequence[torch.Tensor],
    ridge: float = RIDGE,
    memory: CalibrationMemory | None = None,
) -> list[dict[str, Any]]:
    """Edit every layer of a nemotron-nas ``model`` to ``blocks[layer]``. In place.

    ``plan_edits``, then ``collect_statistics``, then ``apply_edits``.

    Args:
        model: A nemotron-nas causal LM (``llama_to_nas`` converts a Llama).
        blocks: One block config (object or published dict) per layer.
        batches: Calibration token ids, each ``[B, T]``; needed only by narrower FFNs
            and linear sub-blocks.
        ridge: Ridge strength of the linear fits (relative, see ``LinearFit.solve``).
        memory: Where the calibration accumulators live and the most bytes one pass
            may hold (default: on the CPU, one pass).

    Returns:
        One JSON-ready record per layer: before/after, each sub-block's edit and its
        initialisation, fit errors, parameters before and after.
    """
    nas_layer(model, 0)
    edits = plan_edits(model.config, blocks)
    return apply_edits(model, edits, collect_statistics(model, edits, batches, ridge, memory))


def apply_edits(
    model: nn.Module, edits: Sequence[Edit], calibration: Calibration
) -> list[dict[str, Any]]:
    """Make ``edits`` (from ``plan_edits``) with the statistics in ``calibration``. In place.

    Returns:
        One JSON-ready record per layer (see ``apply_block_configs``).
    """
    stats = calibration.results
    records = []
    for edit in edits:
        layers = model.model.layers
        before, params_before = model.config.block_configs[edit.layer], _params(layers[edit.layer])
        record: dict[str, Any] = {"layer": edit.layer, "before": before.describe()}
        record["attention"] = _apply_attention(model, edit, before, stats)
        record["ffn"] = _apply_ffn(model, edit, before, stats)
        record["after"] = model.config.block_configs[edit.layer].describe()
        record["params_before"] = params_before
        record["params_after"] = _params(layers[edit.layer])
        records.append(record)
    return records


def _apply_attention(model, edit: Edit, before: BlockConfig, stats) -> dict:
    i, new = edit.layer, edit.block.attention
    if edit.attention == "keep":
        return {"edit": "keep"}
    if edit.attention == "no_op":
        attention_no_op(model, i)
        return {"edit": "no_op"}
    if edit.attention == "kv":
        heads = model.config.num_attention_heads
        reduce_kv_heads(model, i, new.n_heads_in_group)
        old_kv = heads // before.attention.n_heads_in_group
        new_kv = heads // new.n_heads_in_group
        return {"edit": "kv_heads", "from": old_kv, "to": new_kv, "init": KV_INIT}
    fit: SolvedFit = stats[i, "attention"]
    set_linear_attention(model, i, fit.weight)
    return _linear_record(fit)


def _apply_ffn(model, edit: Edit, before: BlockConfig, stats) -> dict:
    i, new = edit.layer, edit.block.ffn
    if edit.ffn == "keep":
        return {"edit": "keep"}
    if edit.ffn == "no_op":
        ffn_no_op(model, i)
        return {"edit": "no_op"}
    hidden = model.config.hidden_size
    if edit.ffn == "resize":
        importance = stats[i, "ffn"]
        old_width = before.ffn.intermediate_size(hidden)
        width = new.intermediate_size(hidden)
        resize_ffn(model, i, new.ffn_mult, importance)
        kept = torch.topk(importance, min(width, old_width)).values.sum() / importance.sum()
        return {
            "edit": "resize",
            "from": old_width,
            "to": width,
            "init": FFN_INIT if width < old_width else "all channels kept, new ones add zero",
            "activation_kept": round(float(kept), 6),
        }
    fit: SolvedFit = stats[i, "ffn"]
    set_linear_ffn(model, i, fit.weight)
    return _linear_record(fit)


def _linear_record(fit: SolvedFit) -> dict:
    return {
        "edit": "linear",
        "init": LINEAR_INIT,
        "tokens": fit.tokens,
        "ridge": fit.ridge,
        "relative_error": round(fit.relative_error, 6),
    }


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

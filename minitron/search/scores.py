"""Replace-1-block scores: the parent with one layer swapped for a variant, against the parent.

For every layer ``l`` and every variant of the library, the variant is initialised
from the parent layer the way ``minitron prune`` block edits do (mean K/V heads, the
most active FFN channels, least-squares linear maps, all fitted on the parent's own
calibration activations, gathered once for every layer) and the parent with only that
layer swapped is scored on held-out tokens: the mean per-token KL(parent ‖ swapped)
of next-token distributions (also its LM loss and top-1 agreement with the parent).

The prefix is reused: the parent is traced once per batch, and a swap at layer ``l``
runs only layers ``l .. L-1`` from the traced state entering ``l``. The variants are
untrained (no blockwise distillation yet).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minitron.layers import decoder, decoder_layers, run_layers, trace
from minitron.modeling import BlockConfig, FFNConfig
from minitron.nas.apply import apply_edits, plan_edits
from minitron.nas.calibrate import RIDGE
from minitron.nas.collect import Calibration, collect_statistics
from minitron.progress import progress
from minitron.search.library import Library


@dataclass
class VariantScore:
    """Held-out quality of the parent with one layer swapped (lower KL = better)."""

    kl: float
    lm_loss: float
    agreement: float


@dataclass
class Scores:
    """``kl[l][v]`` and the other measures, per layer and variant of a library."""

    kl: list[list[float]]
    lm_loss: list[list[float]]
    agreement: list[list[float]]
    parent_lm_loss: float
    tokens: int
    calibration: dict[str, Any] = field(default_factory=dict)


def _statistics(model: nn.Module, library: Library, batches, ridge: float) -> dict[str, Any]:
    """Every fit and channel ranking any variant of any layer needs, from the parent.

    Two kinds share the key ``(layer, "ffn")`` (channel activity for narrower FFNs, a
    least-squares fit for a linear FFN), so they are gathered in two passes.
    """
    config = model.config
    kinds = {(b.attention.kind, b.ffn.kind) for layer in library.layers for b in layer}
    narrowest = min(
        (b.ffn.ffn_mult for layer in library.layers for b in layer if b.ffn.has_mlp),
        default=None,
    )
    parent = config.block_configs
    passes = {}
    first = []
    for block in parent:
        attention = (
            type(block.attention)(replace_with_linear=True)
            if any(a == "linear" for a, _ in kinds)
            else block.attention
        )
        ffn = block.ffn
        if narrowest is not None and block.ffn.has_mlp and narrowest < block.ffn.ffn_mult:
            ffn = FFNConfig(ffn_mult=narrowest)
        first.append(BlockConfig(attention, ffn))
    passes["resize"] = collect_statistics(model, plan_edits(config, first), batches, ridge)
    if any(f == "linear" for _, f in kinds):
        second = [BlockConfig(b.attention, FFNConfig(replace_with_linear=True)) for b in parent]
        passes["linear"] = collect_statistics(model, plan_edits(config, second), batches, ridge)
    return passes


def _swap(model: nn.Module, layer: int, block: BlockConfig, passes: dict[str, Calibration]):
    """Edit ``layer`` of ``model`` to ``block`` in place, from the gathered statistics."""
    blocks = list(model.config.block_configs)
    blocks[layer] = block
    edit = plan_edits(model.config, blocks)[layer]
    results = {}
    if (layer, "attention") in passes["resize"].results:
        results[layer, "attention"] = passes["resize"].results[layer, "attention"]
    source = "linear" if edit.ffn == "linear" else "resize"
    if (layer, "ffn") in passes.get(source, passes["resize"]).results:
        results[layer, "ffn"] = passes[source].results[layer, "ffn"]
    apply_edits(model, [edit], Calibration(results=results))


def _measures(model: nn.Module, normed: torch.Tensor, log_p: torch.Tensor, ids: torch.Tensor):
    """Summed KL(parent ‖ model), LM loss and top-1 agreement over the predicted tokens."""
    logits = model.lm_head(normed[:, :-1]).float()
    log_q = F.log_softmax(logits, dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="sum").item()
    targets = ids[:, 1:]
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
    agree = (log_q.argmax(-1) == log_p.argmax(-1)).sum().item()
    return kl, loss, agree


@torch.no_grad()
def replace_one_block_scores(
    model: nn.Module,
    library: Library,
    calibration: Sequence[torch.Tensor],
    heldout: Sequence[torch.Tensor],
    ridge: float = RIDGE,
) -> Scores:
    """Score every variant of every layer of a nemotron-nas ``model`` (the parent).

    The model is changed while a variant is in place and restored after each; on
    return it is the parent again.
    """
    passes = _statistics(model, library, calibration, ridge)
    layers = decoder_layers(model)
    count = len(layers)
    shape = [[0.0] * len(v) for v in library.layers]
    kl, loss, agree = (copy.deepcopy(shape) for _ in range(3))
    parent_loss, tokens = 0.0, 0
    device = next(model.parameters()).device
    steps = len(heldout) * sum(len(v) for v in library.layers)
    with progress("replace-1-block scores", steps) as advance:
        for ids in heldout:
            ids = ids.to(device)
            traced = trace(model, ids)
            normed = decoder(model).norm(traced.hidden[count])
            log_p = F.log_softmax(model.lm_head(normed[:, :-1]).float(), dim=-1)
            own = _measures(model, normed, log_p, ids)  # (~0, parent loss, all agree)
            parent_loss += own[1]
            predicted = ids[:, 1:].numel()
            tokens += predicted
            for layer, variants in enumerate(library.layers):
                original = model.config.block_configs
                for v, block in enumerate(variants):
                    if block == original[layer]:  # the parent's own block
                        sums = (0.0, own[1], predicted)
                    else:
                        saved = layers[layer]
                        layers[layer] = copy.deepcopy(saved)
                        try:
                            _swap(model, layer, block, passes)
                            hidden = run_layers(
                                model, traced.hidden[layer], traced.layer_kwargs,
                                range(layer, count),
                            )  # fmt: skip
                            sums = _measures(model, decoder(model).norm(hidden), log_p, ids)
                        finally:
                            layers[layer] = saved
                            model.config.block_configs = original
                    kl[layer][v] += sums[0]
                    loss[layer][v] += sums[1]
                    agree[layer][v] += sums[2]
                    advance(1)
    parent = parent_loss / tokens
    return Scores(
        kl=[[k / tokens for k in row] for row in kl],
        lm_loss=[[x / tokens for x in row] for row in loss],
        agreement=[[a / tokens for a in row] for row in agree],
        parent_lm_loss=parent,
        tokens=tokens,
        calibration={name: cal.record for name, cal in passes.items()},
    )

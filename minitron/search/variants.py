"""A library variant as a layer: initialised from the parent's statistics, then trained.

``gather_statistics`` collects, in one or two passes over calibration text, every fit
and channel ranking any variant of any layer needs; ``swapped_layer`` builds one layer
set to a variant from them (and loads its BLD-trained sub-blocks when given), leaving
the parent as it was. Scores, BLD and realised solutions all build layers this way, so
a solution is exactly the composition of the sub-blocks that were scored.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

from torch import nn

from minitron.layers import decoder_layers
from minitron.modeling import BlockConfig, FFNConfig
from minitron.nas.apply import apply_edits, plan_edits
from minitron.nas.collect import Calibration, collect_statistics
from minitron.search.library import Library


class TrainedWeights(Protocol):
    """Trained sub-block weights (``minitron.search.bld.TrainedBlocks``)."""

    def load_into(self, layer_module: nn.Module, layer: int, block: BlockConfig,
                  parent: BlockConfig) -> None: ...  # fmt: skip


def gather_statistics(model: nn.Module, library: Library, batches, ridge: float) -> dict[str, Any]:
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


def _swap(model: nn.Module, layer: int, block: BlockConfig, passes: dict[str, Calibration] | None):
    """Edit ``layer`` of ``model`` to ``block`` in place, from the gathered statistics
    (none needed for kinds that keep or drop weights: ``passes`` may be ``None``)."""
    passes = passes or {"resize": Calibration(results={})}
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


def swapped_layer(
    model: nn.Module,
    layer: int,
    block: BlockConfig,
    passes: dict[str, Calibration] | None,
    trained: TrainedWeights | None = None,
) -> nn.Module:
    """A new layer module: ``layer`` of ``model`` set to ``block`` (initialised from the
    statistics, then the trained sub-blocks where ``trained`` has them); ``model`` is
    left as it was."""
    layers = decoder_layers(model)
    saved, original = layers[layer], model.config.block_configs
    layers[layer] = copy.deepcopy(saved)
    try:
        _swap(model, layer, block, passes)
        swapped = layers[layer]
    finally:
        layers[layer] = saved
        model.config.block_configs = original
    if trained is not None:
        trained.load_into(swapped, layer, block, original[layer])
    return swapped

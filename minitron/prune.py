"""Depth pruning: drop decoder layers and save a standard HF checkpoint.

``drop_layers`` edits a model in place; ``plan_depth`` decides which layers to
drop from a recipe and importance scores (the command that loads, saves and
prints is ``minitron.commands.prune``). The output is the parent's own architecture
(``LlamaForCausalLM`` for Llama) with fewer layers, loadable by stock
``transformers`` without minitron.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from minitron.errors import MinitronError
from minitron.importance import ImportanceResult
from minitron.layers import decoder, decoder_layers

if TYPE_CHECKING:
    from minitron.commands.prune import PruneConfig


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``; tied weights are counted once."""
    return sum(p.numel() for p in model.parameters())


def drop_layers(model: nn.Module, layers: Iterable[int]) -> list[int]:
    """Remove decoder layers ``layers`` (0-indexed) from ``model``, in place.

    Renumbers each kept attention's ``layer_idx`` and sets
    ``config.num_hidden_layers`` (and ``config.layer_types`` where present) so
    generation with a KV cache works on the result.

    Returns:
        The kept layers' parent indices, in order.

    Raises:
        MinitronError: On an index out of range or dropping every layer.
    """
    current = decoder_layers(model)
    num_layers = len(current)
    dropped = set(layers)
    check_drop_indices(dropped, num_layers)
    kept = [i for i in range(num_layers) if i not in dropped]
    decoder(model).layers = nn.ModuleList(current[i] for i in kept)
    for new_index, layer in enumerate(decoder(model).layers):
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == num_layers:
        config.layer_types = [layer_types[i] for i in kept]
    return kept


def check_drop_indices(indices: Iterable[int], num_layers: int) -> None:
    """Reject indices outside ``0..num_layers-1`` or a request to drop everything."""
    indices = set(indices)
    for index in sorted(indices):
        if not 0 <= index < num_layers:
            raise MinitronError(
                f"drop index {index} out of range: the model has {num_layers} layers "
                f"(0..{num_layers - 1}, 0-indexed)"
            )
    if len(indices) >= num_layers:
        raise MinitronError(f"cannot drop all {num_layers} layers")


@dataclass(frozen=True)
class DepthPlan:
    """Which parent layers to keep and why (0-indexed)."""

    layers_before: int
    kept: list[int]
    dropped: list[int]
    reason: str


def check_request(config: PruneConfig, num_layers: int) -> None:
    """Reject a recipe that cannot apply to a ``num_layers``-layer parent."""
    if config.drop_layers is not None:
        check_drop_indices(config.drop_layers, num_layers)
        expected = num_layers - len(config.drop_layers)
        if config.target_layers is not None and config.target_layers != expected:
            raise MinitronError(
                f"target_layers is {config.target_layers} but dropping "
                f"{len(config.drop_layers)} of {num_layers} layers leaves {expected}"
            )
    elif config.target_layers >= num_layers:
        raise MinitronError(
            f"target_layers ({config.target_layers}) must be below the parent's {num_layers} layers"
        )


def drop_count(config: PruneConfig, num_layers: int) -> int:
    """How many layers the recipe removes from a ``num_layers``-layer parent."""
    if config.drop_layers is not None:
        return len(config.drop_layers)
    return num_layers - config.target_layers


def scores_block_size(config: PruneConfig, num_layers: int) -> int:
    """The block size the recipe's method needs scores for."""
    return drop_count(config, num_layers) if config.selection == "contiguous" else 1


def plan_depth(
    config: PruneConfig, num_layers: int, scores: ImportanceResult | None = None
) -> DepthPlan:
    """Choose the layers to drop, from the recipe and (for a method) scores."""
    check_request(config, num_layers)
    count = drop_count(config, num_layers)
    if config.selection == "explicit":
        dropped = sorted(config.drop_layers)
        reason = "explicit drop_layers"
    elif scores is None:
        raise MinitronError(f"method '{config.selection}' needs importance scores")
    elif config.selection == "individual" or count == 1:
        dropped = scores.least_important_layers(count)
        reason = f"{count} individually least important layer(s) by {scores.metric}"
    elif scores.block_size == count:
        dropped = scores.block(scores.least_important_block())
        reason = f"least important contiguous block of {count} by {scores.metric}"
    else:
        raise MinitronError(
            f"scores have blocks of {scores.block_size} layers; dropping {count} layers "
            f"needs blocks of {count} (minitron importance --block-size {count})"
        )
    kept = [i for i in range(num_layers) if i not in set(dropped)]
    assert len(dropped) == count, (dropped, count)
    return DepthPlan(num_layers, kept, dropped, reason)

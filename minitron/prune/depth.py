"""Depth pruning: drop decoder layers and save a standard HF checkpoint.

``drop_layers`` edits a model in place; ``plan_depth`` decides which layers to
drop from a recipe and importance scores (the command that loads, saves and
prints is ``minitron.commands.prune``). The output is the parent's own architecture
(``LlamaForCausalLM`` for Llama) with fewer layers, loadable by stock
``transformers`` without minitron.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from minitron.errors import MinitronError
from minitron.importance.blocks import ImportanceResult
from minitron.layers import decoder, decoder_layers


class DepthRequest(Protocol):
    """What a depth-prune recipe asks for (``PruneConfig`` is one)."""

    drop_layers: list[int] | None
    target_layers: int | None

    @property
    def selection(self) -> str:
        """``explicit``, ``contiguous`` or ``individual``."""


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``; tied weights are counted once."""
    return sum(p.numel() for p in model.parameters())


def drop_layers(model: nn.Module, layers: Iterable[int]) -> list[int]:
    """Remove decoder layers ``layers`` (0-indexed) from ``model``, in place.

    Renumbers each kept attention's ``layer_idx``, sets
    ``config.num_hidden_layers`` and updates every per-layer config field
    (``layer_types``, ``no_rope_layers``, ``block_configs``, lists of layer
    indices such as ``mlp_only_layers``; see ``per_layer_updates``) so the
    result reloads and generates with a KV cache.

    Returns:
        The kept layers' parent indices, in order.

    Raises:
        MinitronError: On an index out of range, dropping every layer, or a
            config with per-layer structure minitron does not know how to
            update (checked before anything changes).
    """
    current = decoder_layers(model)
    num_layers = len(current)
    dropped = set(layers)
    check_drop_indices(dropped, num_layers)
    kept = [i for i in range(num_layers) if i not in dropped]
    updates = per_layer_updates(model.config, kept, num_layers)
    decoder(model).layers = nn.ModuleList(current[i] for i in kept)
    for new_index, layer in enumerate(decoder(model).layers):
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    model.config.num_hidden_layers = len(kept)
    for key, value in updates.items():
        setattr(model.config, key, value)
    return kept


# Lists of layer indices (not one entry per layer): kept entries are renumbered.
INDEX_LISTS = frozenset({"mlp_only_layers", "moe_layers", "attn_layer_indices"})
# Integer settings that make layers differ by a period or an offset: dropping
# layers breaks the pattern, so a model that uses one is refused, unless a
# per-layer ``layer_types`` list (which is updated) is what the model reads.
PATTERN_KEYS = frozenset(
    {
        "decoder_sparse_step", "interleave_moe_layer_step", "attn_layer_period",
        "attn_layer_offset", "expert_layer_period", "expert_layer_offset",
        "moe_layer_interval", "first_k_dense_replace", "no_rope_layer_interval",
        "cross_layer_interval", "sliding_window_pattern", "global_attn_every_n_layers",
    }
)  # fmt: skip
_SUPERSEDED_BY_LAYER_TYPES = frozenset({"sliding_window_pattern", "global_attn_every_n_layers"})


def per_layer_updates(config: Any, kept: list[int], num_layers: int) -> dict[str, Any]:
    """The config fields to change when only the ``kept`` layers remain.

    Per-layer lists (length ``num_layers``, named for layers or blocks) keep
    the kept layers' entries, as the config holds them (``BlockConfig`` objects
    for a nemotron-nas config, not their JSON dicts); lists of layer indices in
    ``INDEX_LISTS`` keep and renumber the kept indices. Does not change ``config``.

    Raises:
        MinitronError: If the config has per-layer structure this cannot update:
            an active layer pattern (``PATTERN_KEYS``) or a layer list of
            another length whose meaning is unknown.
    """
    fields = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    has_types = isinstance(fields.get("layer_types"), list | tuple)
    renumber = {old: new for new, old in enumerate(kept)}
    updates: dict[str, Any] = {}
    for key, value in fields.items():
        per_layer = "layer" in key or key == "block_configs"
        if isinstance(value, list | tuple) and per_layer:
            value = getattr(config, key, value)  # its own objects, not their JSON form
            if len(value) == num_layers:
                updates[key] = [value[i] for i in kept]
            elif key in INDEX_LISTS:
                updates[key] = [renumber[i] for i in value if i in renumber]
            elif value:
                raise MinitronError(
                    f"config field '{key}' describes layers in a way minitron cannot update "
                    f"when dropping layers ({len(value)} entries for {num_layers} layers)"
                )
        elif (
            key in PATTERN_KEYS
            and value not in (None, 0, 1, False)
            and not (has_types and key in _SUPERSEDED_BY_LAYER_TYPES)
        ):
            raise MinitronError(
                f"config field {key}={value} sets a per-layer pattern that dropping "
                "layers would break; minitron does not prune such models"
            )
    return updates


@contextlib.contextmanager
def layers_removed(model: nn.Module, layers: Iterable[int]) -> Iterator[list[int]]:
    """Run the model without decoder ``layers`` inside the block, then restore it.

    Uses ``drop_layers`` (so the pruned model is exactly what a prune would
    give) and puts the layers, their ``layer_idx`` and every changed config
    field back on exit, even after an exception. Yields the kept indices.
    """
    config = model.config
    saved_layers = decoder(model).layers
    saved_idx = [
        (module, module.layer_idx)
        for layer in saved_layers
        for module in (layer, getattr(layer, "self_attn", None))
        if module is not None and hasattr(module, "layer_idx")
    ]
    saved_config = {
        key: getattr(config, key)
        for key in per_layer_updates(config, list(range(len(saved_layers))), len(saved_layers))
    } | {"num_hidden_layers": config.num_hidden_layers}
    try:
        yield drop_layers(model, layers)
    finally:
        decoder(model).layers = saved_layers
        for module, index in saved_idx:
            module.layer_idx = index
        for key, value in saved_config.items():
            setattr(config, key, value)


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


def check_request(config: DepthRequest, num_layers: int) -> None:
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


def drop_count(config: DepthRequest, num_layers: int) -> int:
    """How many layers the recipe removes from a ``num_layers``-layer parent."""
    if config.drop_layers is not None:
        return len(config.drop_layers)
    return num_layers - config.target_layers


def scores_block_size(config: DepthRequest, num_layers: int) -> int:
    """The block size the recipe's method needs scores for."""
    return drop_count(config, num_layers) if config.selection == "contiguous" else 1


def plan_depth(
    config: DepthRequest, num_layers: int, scores: ImportanceResult | None = None
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

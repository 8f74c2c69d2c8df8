"""Parameter counts of nemotron-nas models from their configs alone (meta device)."""

from __future__ import annotations

from typing import Any

import torch

from minitron.modeling import (
    DeciLMConfig,
    DeciLMForCausalLM,
    count_parameters,
    nas_config_from_llama,
)

__all__ = ["count_parameters", "layer_parameters", "target_config"]


def target_config(parent: Any, blocks) -> DeciLMConfig:
    """The nemotron-nas config of ``parent`` (nemotron-nas or Llama) with ``blocks``.

    Only configs: with ``count_parameters`` / ``layer_parameters`` it sizes an edit
    plan of any model without loading it. ``plan_edits(parent_nas_config, blocks)``
    checks that each edit can be made.
    """
    base = parent if isinstance(parent, DeciLMConfig) else nas_config_from_llama(parent)
    return base.with_blocks(blocks)


def layer_parameters(config: Any) -> list[int]:
    """Parameters of each decoder layer, built on the meta device (no memory).

    Accepts a nemotron-nas or a Llama config (converted first).
    """
    if not isinstance(config, DeciLMConfig):
        config = nas_config_from_llama(config)
    with torch.device("meta"):
        model = DeciLMForCausalLM(config)
    return [sum(p.numel() for p in layer.parameters()) for layer in model.model.layers]

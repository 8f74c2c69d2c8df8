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

__all__ = ["count_parameters", "layer_parameters"]


def layer_parameters(config: Any) -> list[int]:
    """Parameters of each decoder layer, built on the meta device (no memory).

    Accepts a nemotron-nas or a Llama config (converted first).
    """
    if not isinstance(config, DeciLMConfig):
        config = nas_config_from_llama(config)
    with torch.device("meta"):
        model = DeciLMForCausalLM(config)
    return [sum(p.numel() for p in layer.parameters()) for layer in model.model.layers]

"""Small shared pieces of the block edits: finding a layer, swapping its sub-blocks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from minitron.errors import MinitronError
from minitron.modeling import BlockConfig, DeciLMConfig
from minitron.modeling.modeling import DeciLMDecoderLayer


def nas_layer(model: nn.Module, layer: int) -> DeciLMDecoderLayer:
    """Decoder layer ``layer`` (0-indexed) of a nemotron-nas causal LM.

    Raises:
        MinitronError: If the model is not nemotron-nas or the index is out of range.
    """
    if not isinstance(getattr(model, "config", None), DeciLMConfig):
        raise MinitronError(
            f"block edits need a nemotron-nas model (convert a Llama with llama_to_nas), "
            f"got {type(model).__name__}"
        )
    layers = model.model.layers
    if not isinstance(layer, int) or not 0 <= layer < len(layers):
        last = len(layers) - 1
        raise MinitronError(f"layer {layer} out of range: the model has layers 0..{last}")
    return layers[layer]


def set_block(model: nn.Module, layer: int, block: BlockConfig) -> None:
    """Record ``block`` as the config of ``layer`` (in place on ``model.config``)."""
    blocks = list(model.config.block_configs)
    blocks[layer] = block
    model.config.block_configs = tuple(blocks)


def set_attention(model: nn.Module, layer: int, module: nn.Module | None, **changes) -> None:
    """Swap the attention sub-block of ``layer`` (None = no_op: norm removed too), in place."""
    _set_sub_block(model, layer, "attention", module, changes)


def set_ffn(model: nn.Module, layer: int, module: nn.Module | None, **changes) -> None:
    """Swap the FFN sub-block of ``layer`` (None = no_op: norm removed too), in place."""
    _set_sub_block(model, layer, "ffn", module, changes)


# block-config field -> (layer's kind attribute, module attribute, norm attribute)
_SUB_BLOCKS = {
    "attention": ("attention_kind", "self_attn", "input_layernorm"),
    "ffn": ("ffn_kind", "mlp", "post_attention_layernorm"),
}


def _set_sub_block(
    model: nn.Module, layer: int, part: str, module: nn.Module | None, changes: dict
) -> None:
    """Record ``changes`` to ``part`` of ``layer``'s block config and swap in ``module``."""
    kind_attr, module_attr, norm_attr = _SUB_BLOCKS[part]
    block = model.config.block_configs[layer]
    config = replace(getattr(block, part), **changes)
    set_block(model, layer, replace(block, **{part: config}))
    target = model.model.layers[layer]
    setattr(target, kind_attr, config.kind)
    if module is None:
        for name in (module_attr, norm_attr):
            if hasattr(target, name):
                delattr(target, name)
    else:
        setattr(target, module_attr, module)


def like(module: nn.Module, reference: torch.Tensor) -> nn.Module:
    """``module`` moved to the device and dtype of ``reference``."""
    return module.to(device=reference.device, dtype=reference.dtype)


def build_like(build: Callable[[], nn.Module], reference: torch.Tensor) -> nn.Module:
    """``build()`` made directly on ``reference``'s device and cast to its dtype: a new
    sub-block of a GPU model is allocated and initialised there, not on the CPU and
    copied over (the search builds one per variant, layer and held-out batch)."""
    with torch.device(reference.device):
        return build().to(dtype=reference.dtype)


def attention_no_op(model: nn.Module, layer: int) -> None:
    """Remove the attention of ``layer`` entirely (weights and norm). In place."""
    nas_layer(model, layer)
    set_attention(model, layer, None, no_op=True, replace_with_linear=False, n_heads_in_group=None)


def ffn_no_op(model: nn.Module, layer: int) -> None:
    """Remove the FFN of ``layer`` entirely (weights and norm). In place."""
    nas_layer(model, layer)
    set_ffn(model, layer, None, no_op=True, replace_with_linear=False, ffn_mult=None)

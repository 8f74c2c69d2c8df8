"""Llama -> nemotron-nas conversion (lossless) and parameter counts from configs alone."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from minitron.errors import MinitronError
from minitron.modeling.block_config import (
    AttentionConfig,
    BlockConfig,
    FFNConfig,
    intermediate_size_to_ffn_mult,
)
from minitron.modeling.configuration import DeciLMConfig
from minitron.modeling.modeling import DeciLMForCausalLM

# Llama config keys carried over as they are.
_SHARED_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "pretraining_tp",
    "tie_word_embeddings",
    "attention_bias",
    "attention_dropout",
    "mlp_bias",
)


def nas_config_from_llama(config: Any) -> DeciLMConfig:
    """The nemotron-nas config of a Llama: every block = the Llama's own attention and FFN.

    Each block has ``n_heads_in_group = heads // kv_heads`` and the ``ffn_mult`` whose
    width is the Llama's ``intermediate_size``.

    Raises:
        MinitronError: If the config is not a plain Llama, or its shapes cannot be
            written in the format (head_dim other than hidden // heads; an FFN width
            that is not a multiple of 256, since widths are rounded up to 256).
    """
    if getattr(config, "model_type", None) != "llama":
        raise MinitronError(
            f"only Llama models convert to nemotron-nas, got model_type "
            f"{getattr(config, 'model_type', None)!r}"
        )
    heads, hidden = config.num_attention_heads, config.hidden_size
    kv_heads = config.num_key_value_heads or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if head_dim * heads != hidden:
        raise MinitronError(
            f"nemotron-nas needs head_dim = hidden_size // heads; this Llama has head_dim "
            f"{head_dim} with hidden {hidden} and {heads} heads"
        )
    if heads % kv_heads:
        raise MinitronError(f"{kv_heads} KV heads do not divide {heads} attention heads")
    block = BlockConfig(
        AttentionConfig(n_heads_in_group=heads // kv_heads),
        FFNConfig(ffn_mult=intermediate_size_to_ffn_mult(config.intermediate_size, hidden)),
    )
    values = {key: getattr(config, key) for key in _SHARED_KEYS if hasattr(config, key)}
    return DeciLMConfig(
        **values,
        rope_parameters=dict(config.rope_parameters or {}),
        block_configs=[block] * config.num_hidden_layers,
        architectures=["DeciLMForCausalLM"],
        dtype=getattr(config, "dtype", None),
    )


def llama_to_nas(model: nn.Module) -> DeciLMForCausalLM:
    """Convert a ``LlamaForCausalLM`` into a nemotron-nas model with identical outputs.

    The new model SHARES the Llama's weight tensors (no copy, no extra memory): the
    weight names of the two formats are the same. Changing a weight of one in place
    changes the other; the nas edits (``minitron.nas``) replace tensors rather than
    write into them, so they leave the Llama as it was. ``copy.deepcopy`` the Llama
    first for fully independent models.

    Raises:
        MinitronError: See ``nas_config_from_llama``.
    """
    config = nas_config_from_llama(model.config)
    config._attn_implementation = model.config._attn_implementation
    with torch.device("meta"):
        nas = DeciLMForCausalLM(config)
    nas.load_state_dict(model.state_dict(), strict=True, assign=True)
    device = next(model.parameters()).device
    with torch.device(device):  # its inv_freq buffer is not in the state dict
        nas.model.rotary_emb = LlamaRotaryEmbedding(config)
    if config.tie_word_embeddings:
        nas.lm_head.weight = nas.model.embed_tokens.weight
    nas.generation_config = model.generation_config
    return nas.train(model.training)


def count_parameters(config: Any) -> int:
    """Parameters of a model built from its config alone, on the meta device (no memory).

    Accepts a nemotron-nas config or a Llama config (converted first). Tied embeddings
    count once.
    """
    if not isinstance(config, DeciLMConfig):
        config = nas_config_from_llama(config)
    with torch.device("meta"):
        model = DeciLMForCausalLM(config)
    seen: set[int] = set()
    total = 0
    for param in model.parameters():  # parameters() yields a tied tensor once
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total

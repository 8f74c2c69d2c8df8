"""What each block variant costs, from the config alone: parameters, KV cache, memory.

For hidden size ``H``, ``n`` query heads of width ``d`` (``H = n·d``), ``k`` K/V heads
and FFN width ``I``, one layer holds:

- attention: ``H`` (its RMSNorm) + ``H·n·d`` (q) + ``2·H·k·d`` (k, v) + ``n·d·H`` (o),
  plus biases with ``attention_bias``; linear attention ``H + H·H``; no_op 0;
- FFN: ``H`` (its RMSNorm) + ``3·H·I`` (gate, up, down), plus biases with ``mlp_bias``;
  linear FFN ``H + H·H``; no_op 0.

Outside the layers: the embedding ``V·H``, the LM head ``V·H`` unless tied, the final
norm ``H`` (``non_layer_params``). KV cache per token: ``2·k·d`` values in the serving
dtype for softmax attention, nothing otherwise. Memory of a layer at the recipe's
``batch`` and ``seq_len``: its weights in the serving dtype + ``batch·seq_len`` tokens
of its KV cache. (Checked against the models transformers builds in the tests.)
"""

from __future__ import annotations

from dataclasses import dataclass

from minitron.modeling import BlockConfig, DeciLMConfig


@dataclass(frozen=True)
class BlockCost:
    """Costs of one layer with one (attention, FFN) variant."""

    params: int
    kv_bytes_per_token: int
    memory_bytes: int


def attention_params(config: DeciLMConfig, block: BlockConfig) -> int:
    """Parameters of the attention sub-block (norm included)."""
    attention = block.attention
    hidden = config.hidden_size
    if attention.no_op:
        return 0
    if attention.replace_with_linear:
        return hidden + hidden * hidden
    q = config.num_attention_heads * config.head_dim
    kv = kv_heads(config, block) * config.head_dim
    bias = (q + 2 * kv + hidden) if config.attention_bias else 0
    return hidden + 2 * hidden * q + 2 * hidden * kv + bias


def ffn_params(config: DeciLMConfig, block: BlockConfig) -> int:
    """Parameters of the FFN sub-block (norm included)."""
    ffn = block.ffn
    hidden = config.hidden_size
    if ffn.no_op:
        return 0
    if ffn.replace_with_linear:
        return hidden + hidden * hidden
    width = ffn.intermediate_size(hidden)
    bias = (2 * width + hidden) if config.mlp_bias else 0
    return hidden + 3 * hidden * width + bias


def kv_heads(config: DeciLMConfig, block: BlockConfig) -> int:
    """K/V heads of a block (0 without softmax attention)."""
    attention = block.attention
    return config.num_attention_heads // attention.n_heads_in_group if attention.has_heads else 0


def non_layer_params(config: DeciLMConfig) -> int:
    """Embedding, LM head (unless tied) and final norm."""
    embed = config.vocab_size * config.hidden_size
    head = 0 if config.tie_word_embeddings else embed
    return embed + head + config.hidden_size


def block_cost(
    config: DeciLMConfig, block: BlockConfig, batch: int, seq_len: int, dtype_bytes: int = 2
) -> BlockCost:
    """Parameters, KV bytes per token and memory at ``batch × seq_len`` of one block."""
    params = attention_params(config, block) + ffn_params(config, block)
    kv_bytes = 2 * kv_heads(config, block) * config.head_dim * dtype_bytes
    memory = params * dtype_bytes + batch * seq_len * kv_bytes
    return BlockCost(params, kv_bytes, memory)

"""The nemotron-nas (DeciLM) causal LM: a Llama whose layers differ one from another.

Built from transformers' Llama pieces (RMSNorm, rotary embedding, attention
functions incl. sdpa, causal masks, DynamicCache). Per layer (``config.block_configs``):

- attention: grouped-query attention with ``num_attention_heads // n_heads_in_group``
  K/V heads (``self_attn.{q,k,v,o}_proj``), or ``x + W · norm(x)``
  (``self_attn.linear_attn``), or nothing at all (no norm either);
- FFN: SwiGLU of the layer's width (``mlp.{gate,up,down}_proj``), or
  ``x + W · norm(x)`` (``mlp.linear_mlp``), or nothing.

Layers without softmax attention hold no KV cache (``DummyLayer`` in the cache).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from minitron.modeling.cache_api import (
    CACHE_KWARG,
    OUTPUT_FIELD,
    cache_kwargs,
    output_cache,
    pick_cache,
)
from minitron.modeling.configuration import DeciLMConfig


class _LayerView:
    """``config`` as one layer sees it: the shared fields, with this layer's own widths.

    Llama's ``__init__`` reads the K/V heads and the FFN width from its config; a
    nemotron-nas layer has its own. Running Llama's own ``__init__`` on this view
    (instead of re-implementing it) keeps whatever transformers adds there, such as
    5.25's kernel wrappers (``_kernel_funcs``) that its ``forward`` relies on.
    """

    def __init__(self, config: DeciLMConfig, **own: int):
        self._config, self._own = config, own

    def __getattr__(self, name: str):
        own = self.__dict__.get("_own", {})
        return own[name] if name in own else getattr(self.__dict__["_config"], name)


class DeciLMAttention(LlamaAttention):
    """Llama attention with this layer's own number of K/V heads (forward is Llama's)."""

    def __init__(self, config: DeciLMConfig, layer_idx: int, num_key_value_heads: int):
        view = _LayerView(config, num_key_value_heads=num_key_value_heads, head_dim=config.head_dim)
        super().__init__(view, layer_idx)
        self.config = config  # the real config: forward reads its attention implementation


class DeciLMMLP(LlamaMLP):
    """Llama's SwiGLU FFN with this layer's own width (forward is Llama's)."""

    def __init__(self, config: DeciLMConfig, intermediate_size: int):
        super().__init__(_LayerView(config, intermediate_size=intermediate_size))
        self.config = config


class DeciLMLinearAttention(nn.Module):
    """Attention replaced by one linear map: the layer adds ``W · norm(x)``."""

    def __init__(self, config: DeciLMConfig):
        super().__init__()
        self.linear_attn = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear_attn(hidden_states)


class DeciLMLinearMLP(nn.Module):
    """FFN replaced by one linear map: the layer adds ``W · norm(x)``."""

    def __init__(self, config: DeciLMConfig):
        super().__init__()
        self.linear_mlp = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear_mlp(hidden_states)


class DeciLMDecoderLayer(GradientCheckpointingLayer):
    """One heterogeneous layer; absent sub-blocks (no_op) hold no modules at all."""

    def __init__(self, config: DeciLMConfig, layer_idx: int):
        super().__init__()
        block = config.block_configs[layer_idx]
        self.attention_kind = block.attention.kind
        self.ffn_kind = block.ffn.kind
        eps = config.rms_norm_eps
        if self.attention_kind != "no_op":
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=eps)
            if self.attention_kind == "attention":
                kv = config.kv_heads(layer_idx)
                self.self_attn = DeciLMAttention(config, layer_idx, kv)
            else:
                self.self_attn = DeciLMLinearAttention(config)
        if self.ffn_kind != "no_op":
            self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=eps)
            if self.ffn_kind == "ffn":
                width = block.ffn.intermediate_size(config.hidden_size)
                self.mlp = DeciLMMLP(config, width)
            else:
                self.mlp = DeciLMLinearMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        hidden_states = self.attend(
            hidden_states, attention_mask=attention_mask, position_ids=position_ids,
            cache=pick_cache(cache, past_key_values), use_cache=use_cache,
            position_embeddings=position_embeddings, **kwargs,
        )  # fmt: skip
        return self.feed_forward(hidden_states)

    def attend(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The residual stream after the attention sub-block (its input when no_op)."""
        if self.attention_kind == "attention":
            attn, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **cache_kwargs(cache),
                **kwargs,
            )
            hidden_states = hidden_states + attn
        elif self.attention_kind == "linear":
            hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states))
        return hidden_states

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The residual stream after the FFN sub-block (its input when no_op)."""
        if self.ffn_kind != "no_op":
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class DeciLMPreTrainedModel(PreTrainedModel):
    config_class = DeciLMConfig
    config: DeciLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DeciLMDecoderLayer"]
    _skip_keys_device_placement = [CACHE_KWARG]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": DeciLMDecoderLayer, "attentions": DeciLMAttention}


class DeciLMModel(DeciLMPreTrainedModel):
    """The decoder stack: embeddings, heterogeneous layers, final norm."""

    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [DeciLMDecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Hidden states of ``input_ids`` [B, T] (or ``inputs_embeds`` [B, T, H]).

        The KV cache comes as ``cache`` (transformers >= 5.24's name, which its
        ``generate`` passes) or ``past_key_values`` (the earlier name); it is
        returned in the output field of the installed release.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        cache = pick_cache(cache, past_key_values)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        first = next(
            (i for i, b in enumerate(self.config.block_configs) if b.attention.has_heads), None
        )
        has_attention = first is not None
        if not has_attention:  # nothing to cache, no positions or mask needed
            cache = None
        elif use_cache and cache is None:
            cache = DeciLMCache(config=self.config)
        if position_ids is None:
            # The first layer with attention holds the cache's length: layer 0 may hold
            # none (transformers >= 5.25 no longer looks past a cache-less layer 0 itself).
            seen = cache.get_seq_length(first) if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + seen
            position_ids = position_ids.unsqueeze(0)
        causal_mask = None
        if has_attention:
            causal_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **cache_kwargs(cache),
            )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{OUTPUT_FIELD: cache})


class DeciLMCache(DynamicCache):
    """A ``DynamicCache`` whose length, asked of layer 0, comes from the first layer that
    holds a cache. transformers up to 5.24 looked past a cache-less layer 0 itself; 5.25
    asks layer 0 (a ``DummyLayer`` when it has no attention) and fails in ``generate``."""

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx == 0:
            for index, layer in enumerate(self.layers):
                if hasattr(layer, "get_seq_length"):
                    return super().get_seq_length(index)
            return 0
        return super().get_seq_length(layer_idx)


class DeciLMForCausalLM(DeciLMPreTrainedModel, GenerationMixin):
    """nemotron-nas causal LM (``architectures: ["DeciLMForCausalLM"]``)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        self.model = DeciLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """transformers' own cache for ``generate``, made a ``DeciLMCache`` (same state)."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get(CACHE_KWARG)
        if type(cache) is DynamicCache:
            cache.__class__ = DeciLMCache

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (and loss with ``labels``); the cache as in ``DeciLMModel.forward``."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=pick_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = _keep_positions(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{OUTPUT_FIELD: output_cache(outputs)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def _keep_positions(hidden: torch.Tensor, keep: int | torch.Tensor) -> torch.Tensor:
    """The positions of ``hidden`` [B, T, H] whose logits are wanted.

    ``keep`` is an int (the last ``keep`` positions; 0 keeps all, as ``generate``
    passes 1), 1-D positions, or a 2-D bool mask / per-sample positions. Written
    here because transformers' own helper is not in every 5.x release.
    """
    if isinstance(keep, torch.Tensor) and keep.ndim == 2:
        if keep.dtype == torch.bool:
            return hidden[keep]  # [N, H]
        return torch.take_along_dim(hidden, keep[..., None], dim=1)
    if isinstance(keep, int):
        keep = slice(-keep, None)
    return hidden[:, keep, :]

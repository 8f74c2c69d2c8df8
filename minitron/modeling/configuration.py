"""The nemotron-nas config class (``model_type: nemotron-nas``, DeciLM format).

The keys and their defaults are those of the published checkpoints' config.json:
the Llama keys, ``intermediate_size: null``, ``num_key_value_heads: null`` and one
``block_configs`` entry per layer. RoPE is read from ``rope_theta`` / ``rope_scaling``
(or transformers 5's ``rope_parameters``) and written back as ``rope_theta`` /
``rope_scaling``, the keys that vLLM, TensorRT-LLM and llama.cpp's converter read.

A config that carries ``auto_map`` (remote code on the Hub) is read by this class: the
key is dropped, so a checkpoint saved again never points at code it does not hold.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from minitron.errors import MinitronError
from minitron.modeling.block_config import BlockConfig


def parse_blocks(blocks) -> tuple[BlockConfig, ...]:
    """``blocks`` (``BlockConfig`` objects or published dicts) as a tuple of ``BlockConfig``.

    Raises:
        MinitronError: On a block that is not a valid block config (names its index).
    """
    if isinstance(blocks, dict | str | bytes):
        raise MinitronError("nemotron-nas config: block_configs must be a list of blocks")
    return tuple(BlockConfig.from_dict(b, f"block_configs[{i}]") for i, b in enumerate(blocks))


class DeciLMConfig(PreTrainedConfig):
    """Config of a nemotron-nas model: a Llama whose every layer has its own block config.

    ``block_configs`` may be given as dicts (published JSON) or ``BlockConfig`` objects;
    it is stored as a tuple of ``BlockConfig``, also when assigned after construction
    (depth pruning writes back the kept layers' entries), so the model, its caches and
    ``to_dict`` never see a plain dict.
    """

    model_type = "nemotron-nas"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # 5.24 / 5.23 names

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int | None = None
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pretraining_tp: int | None = 1
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: float | None = 0.0
    mlp_bias: bool = False
    block_configs: Any = None

    def __post_init__(self, **kwargs):
        kwargs.pop("auto_map", None)
        for key in ("sliding_window", "layer_types"):
            if kwargs.pop(key, None) is not None:
                raise MinitronError(f"unsupported nemotron-nas feature: {key}")
        head_dim = kwargs.pop("head_dim", None)  # always hidden // heads in this format
        if head_dim is not None and head_dim * self.num_attention_heads != self.hidden_size:
            raise MinitronError(
                f"nemotron-nas config: head_dim {head_dim} is not hidden_size // heads"
            )
        if self.block_configs is None:
            raise MinitronError("nemotron-nas config: block_configs is missing")
        super().__post_init__(**kwargs)
        self.intermediate_size = None
        self.num_key_value_heads = None
        self._check_base()
        self._check_blocks()

    def __setattr__(self, key: str, value: Any) -> None:
        """Store ``block_configs`` as a tuple of ``BlockConfig`` however it is given."""
        if key == "block_configs" and value is not None:
            value = parse_blocks(value)
        super().__setattr__(key, value)

    def _check_base(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise MinitronError(
                f"nemotron-nas config: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )

    def _check_blocks(self) -> None:
        if len(self.block_configs) != self.num_hidden_layers:
            raise MinitronError(
                f"nemotron-nas config: {len(self.block_configs)} block_configs for "
                f"num_hidden_layers {self.num_hidden_layers}"
            )
        for i, block in enumerate(self.block_configs):
            group = block.attention.n_heads_in_group
            if block.attention.has_heads and self.num_attention_heads % group:
                raise MinitronError(
                    f"block_configs[{i}]: n_heads_in_group {group} does not divide "
                    f"num_attention_heads {self.num_attention_heads}"
                )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def layer_types(self) -> list[str]:
        """Cache layout for transformers' caches: layers without attention hold no cache.

        transformers' caches turn a layer typed ``moe`` (its legacy name for "a layer
        without attention") into a ``DummyLayer``; ``dummy`` itself fails its config
        validation. Derived from ``block_configs``, never saved.
        """
        return ["full_attention" if b.attention.has_heads else "moe" for b in self.block_configs]

    def kv_heads(self, layer: int) -> int | None:
        """K/V heads of a layer, None when it has no softmax attention."""
        attention = self.block_configs[layer].attention
        if not attention.has_heads:
            return None
        return self.num_attention_heads // attention.n_heads_in_group

    def with_blocks(self, blocks) -> DeciLMConfig:
        """A new config equal to this one but with ``blocks`` (objects or published dicts).

        Raises:
            MinitronError: If a block is invalid or their number is not the layer count.
        """
        data = self.to_dict()
        data["block_configs"] = [b.to_dict() for b in parse_blocks(blocks)]
        config = type(self).from_dict(data)
        config._attn_implementation = self._attn_implementation
        return config

    def to_dict(self) -> dict[str, Any]:
        """Serialize with the published keys (``block_configs`` as dicts, ``rope_scaling``)."""
        out = super().to_dict()
        out["block_configs"] = [b.to_dict() for b in self.block_configs]
        rope = dict(out.pop("rope_parameters", None) or {})
        out["rope_theta"] = rope.pop("rope_theta", 10000.0)
        out["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
        if out.get("dtype") is not None:
            out["torch_dtype"] = out["dtype"]
        out["intermediate_size"] = None
        out["num_key_value_heads"] = None
        return out

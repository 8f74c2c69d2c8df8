"""Tiny nemotron-nas models and Llamas for the nas tests (widths reachable by the format)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from minitron.modeling import BlockConfig, DeciLMConfig, DeciLMForCausalLM
from tests.conftest import VOCAB, char_tokenizer, tiny_llama

CONFIGS = Path(__file__).parent / "fixtures" / "configs"

# hidden 64, 8 heads of 8, 4 KV heads (n_heads_in_group 2), FFN 512 (ffn_mult 12).
TINY = dict(hidden_size=64, intermediate_size=512, num_attention_heads=8, num_key_value_heads=4)


def published(name: str) -> dict:
    """A fixture config.json as a dict (see tests/fixtures/configs/SOURCES.md)."""
    return json.loads((CONFIGS / f"{name}.config.json").read_text())


def tiny_nas_llama(num_layers: int = 4, seed: int = 0, **overrides):
    """A tiny random Llama whose shapes the nemotron-nas format can express."""
    return tiny_llama(num_layers, seed, **(TINY | overrides))


def block(attention=None, ffn=None, **kwargs) -> dict:
    """A block config in the published JSON shape; ``attention``/``ffn`` are shorthands.

    ``attention``: an int n_heads_in_group, "linear" or "no_op"; ``ffn``: an ffn_mult,
    "linear" or "no_op".
    """
    attn = {"n_heads_in_group": attention}
    if attention in ("linear", "no_op"):
        attn = {"replace_with_linear": attention == "linear", "no_op": attention == "no_op"}
    mlp = {"ffn_mult": ffn}
    if ffn in ("linear", "no_op"):
        mlp = {"replace_with_linear": ffn == "linear", "no_op": ffn == "no_op"}
    return {"attention": attn, "ffn": mlp, **kwargs}


# Every block kind; layer 0 has no attention, so the cache's first layer holds nothing.
MIXED = [
    block("no_op", 12),
    block(2, 6),
    block("linear", "linear"),
    block(8, "no_op"),
    block("no_op", "no_op"),
    block(1, 12),
    block(4, "linear"),
]


def tiny_nas(blocks=MIXED, seed: int = 0, **overrides) -> DeciLMForCausalLM:
    """A tiny random nemotron-nas model with the given blocks, fp32, eval mode."""
    values = dict(
        vocab_size=VOCAB,
        num_hidden_layers=len(blocks),
        max_position_embeddings=128,
        initializer_range=0.3,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        block_configs=blocks,
        hidden_size=64,
        num_attention_heads=8,
    )
    torch.manual_seed(seed)
    return DeciLMForCausalLM(DeciLMConfig(**(values | overrides))).eval()


def blocks_of(kept: list[int], blocks=MIXED) -> list[dict]:
    """The published-shape block configs of the ``kept`` layers of ``blocks``."""
    return [BlockConfig.from_dict(blocks[i]).to_dict() for i in kept]


def nas_from_kept(parent: DeciLMForCausalLM, kept: list[int]) -> DeciLMForCausalLM:
    """A nas model built from the kept blocks; its layer j gets parent layer kept[j]'s weights.

    An independent reference for depth pruning: nothing of ``drop_layers`` is used.
    """
    values = parent.config.to_dict() | {
        "block_configs": [parent.config.block_configs[i].to_dict() for i in kept],
        "num_hidden_layers": len(kept),
    }
    model = DeciLMForCausalLM(DeciLMConfig.from_dict(values)).eval()
    renamed = {}
    for name, tensor in parent.state_dict().items():
        if not name.startswith("model.layers."):
            renamed[name] = tensor
            continue
        old, rest = name.removeprefix("model.layers.").split(".", 1)
        if int(old) in kept:
            renamed[f"model.layers.{kept.index(int(old))}.{rest}"] = tensor
    model.load_state_dict(renamed, strict=True)  # every weight named, none left over
    return model


def save_tiny_nas(path, blocks=MIXED, seed: int = 0):
    """Write ``tiny_nas(blocks, seed)`` and the character tokenizer as a checkpoint folder."""
    tiny_nas(blocks, seed).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def single_thread():
    """Run tiny models on one thread: on a busy 2-core machine, thread hand-offs cost
    milliseconds per tiny matmul (3.5 ms against 3 µs for a 64x64 linear here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def token_batches(count: int = 2, batch: int = 3, seq_len: int = 16, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seq_len), generator=generator) for _ in range(count)]

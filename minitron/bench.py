"""Size and speed of a causal LM: parameters, weight and KV-cache memory, tokens/s.

The size functions read only a model's config (a plain dict), so they work for
configs of any size without building the model. The speed functions take a
model and time it; none of them changes the model.

KV-cache size is per token of context, summed over layers, in bfloat16
(2 bytes a value): ``2 (K and V) · kv_heads · head_dim · 2`` per attention layer.
A nemotron-nas config gives every layer its own KV heads
(``num_attention_heads // n_heads_in_group``); its ``no_op`` and
``replace_with_linear`` attention layers keep no cache at all.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from minitron.errors import MinitronError
from minitron.modeling.cache_api import cache_kwargs, output_cache

BF16_BYTES = 2


def _field(block: Any, name: str, default: Any = None) -> Any:
    """``block[name]`` for a dict, ``block.name`` for a config object."""
    if isinstance(block, Mapping):
        return block.get(name, default)
    return getattr(block, name, default)


def head_dim(config: Mapping[str, Any]) -> int:
    """Width of one attention head: ``head_dim`` if set, else hidden / heads."""
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def kv_heads_per_layer(config: Mapping[str, Any]) -> list[int]:
    """Key/value heads that each decoder layer caches (0 for a layer without attention).

    Args:
        config: A model config as a dict (``PretrainedConfig.to_dict()`` or
            ``config.json``). With ``block_configs`` (nemotron-nas), each layer's
            ``attention`` entry decides; otherwise every layer has
            ``num_key_value_heads`` (default: ``num_attention_heads``).
    """
    heads = config["num_attention_heads"]
    blocks = config.get("block_configs")
    if blocks:
        return [
            _block_kv_heads(_field(block, "attention"), heads, i) for i, block in enumerate(blocks)
        ]
    kv = config.get("num_key_value_heads") or heads
    return [kv] * config["num_hidden_layers"]


def _block_kv_heads(attention: Any, heads: int, layer: int) -> int:
    if attention is None:
        raise MinitronError(f"block_configs[{layer}] has no 'attention' entry")
    if _field(attention, "no_op", False) or _field(attention, "replace_with_linear", False):
        return 0
    group = _field(attention, "n_heads_in_group")
    if not group or heads % group:
        raise MinitronError(
            f"block_configs[{layer}].attention.n_heads_in_group must divide "
            f"num_attention_heads ({heads}), got {group}"
        )
    return heads // group


def kv_bytes_per_token(config: Mapping[str, Any], bytes_per_value: int = BF16_BYTES) -> int:
    """Bytes of KV cache one token of context costs, over all layers.

    ``2 · sum(kv_heads of each layer) · head_dim · bytes_per_value``; 131,072
    for Llama-3.1-8B in bfloat16 (32 layers, 8 KV heads of 128).
    """
    return 2 * sum(kv_heads_per_layer(config)) * head_dim(config) * bytes_per_value


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    step: Callable[[], Callable[[], Any]], device: torch.device, repeats: int, warmup: int
) -> float:
    """Median wall time of ``repeats`` timed calls, after ``warmup`` untimed ones.

    Args:
        step: Prepares one run (untimed) and returns the function to time.
        device: Synchronized before and after each timed call on CUDA.
        repeats: Timed runs (at least 1).
        warmup: Untimed runs first.
    """
    times = []
    for i in range(warmup + repeats):
        timed = step()
        _sync(device)
        start = time.perf_counter()
        timed()
        _sync(device)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def _forward(model: nn.Module) -> Callable[..., Any]:
    """``model`` called with the last position's logits only, where it allows that."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return lambda **kw: model(logits_to_keep=1, **kw)
    return model


def _prompt(model: nn.Module, batch_size: int, prompt_len: int, seed: int) -> torch.Tensor:
    """Random token ids ``[batch_size, prompt_len]`` on the model's device."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, prompt_len), generator=generator)
    return ids.to(next(model.parameters()).device)


@torch.no_grad()
def prefill_tokens_per_s(
    model: nn.Module, batch_size: int, prompt_len: int, repeats: int = 3, warmup: int = 1
) -> float:
    """Prompt tokens processed per second: one forward over ``[B, T]`` filling the KV cache.

    Does not change the model. Only the last position's logits are computed,
    as a server does before the first new token.
    """
    ids = _prompt(model, batch_size, prompt_len, seed=0)
    forward = _forward(model)
    seconds = median_seconds(
        lambda: lambda: forward(input_ids=ids, use_cache=True),
        ids.device, repeats, warmup,
    )  # fmt: skip
    return batch_size * prompt_len / seconds


@torch.no_grad()
def decode_tokens_per_s(
    model: nn.Module,
    batch_size: int,
    prompt_len: int,
    gen_len: int,
    repeats: int = 3,
    warmup: int = 1,
) -> float:
    """New tokens per second generated greedily one at a time after a ``[B, T]`` prompt.

    Does not change the model. Each run prefills the prompt untimed, then times
    ``gen_len`` single-token steps with the KV cache (``B · gen_len`` tokens).
    """
    ids = _prompt(model, batch_size, prompt_len, seed=0)
    forward = _forward(model)

    def step() -> Callable[[], None]:
        first = forward(input_ids=ids, use_cache=True)
        state = {"out": first}

        def generate() -> None:
            for _ in range(gen_len):
                out = state["out"]
                next_ids = out.logits[:, -1:].argmax(-1)  # [B, 1]
                cache = cache_kwargs(output_cache(out))
                state["out"] = forward(input_ids=next_ids, use_cache=True, **cache)

        return generate

    seconds = median_seconds(step, ids.device, repeats, warmup)
    return batch_size * gen_len / seconds


def probe_device(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """Rough matmul FLOP/s and memory-copy bytes/s of ``device`` right now (~0.1 s).

    Used only to guess whether timing a model would take far too long.
    """
    a = torch.randn(512, 512, device=device).to(dtype)  # [512, 512]
    block = torch.zeros(8 * 2**20 // a.element_size(), dtype=dtype, device=device)  # 8 MiB
    copy = torch.zeros_like(block)
    a @ a, copy.copy_(block)  # warm up the kernels
    _sync(device)
    start = time.perf_counter()
    for _ in range(4):
        a @ a
    _sync(device)
    flops = 4 * 2 * 512**3 / max(time.perf_counter() - start, 1e-9)
    start = time.perf_counter()
    for _ in range(4):
        copy.copy_(block)
    _sync(device)
    bandwidth = (
        4 * 2 * block.numel() * block.element_size() / max(time.perf_counter() - start, 1e-9)
    )
    return flops, bandwidth


def estimate_seconds(
    params: int,
    value_bytes: int,
    batch_sizes: list[int],
    prompt_len: int,
    gen_len: int,
    runs: int,
    speed: tuple[float, float],
) -> float:
    """A rough guess of how long timing takes: ``2 · params`` FLOPs a token, plus
    one full read of the weights per decode step; ``runs`` = warm-up + repeats."""
    flops_per_s, bytes_per_s = speed
    tokens = sum(2 * b * prompt_len + b * gen_len for b in batch_sizes)  # decode re-prefills
    steps = len(batch_sizes) * (2 + gen_len)
    return runs * (2 * params * tokens / flops_per_s + steps * params * value_bytes / bytes_per_s)

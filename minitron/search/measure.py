"""Runtime of each block variant measured on the current device.

For every distinct (attention, FFN) variant, the decoder of a nemotron-nas model with
``copies`` layers of that block (random weights in the serving dtype) is timed against
the same decoder whose layers are ``no_op`` (embedding and final norm only); the
difference over ``copies`` is the block's time (several copies lift a block's time
above the timer's noise, as Puzzletron does). Prefill: a forward over
``batch × seq_len`` tokens. Decode: one new token per sequence on a KV cache of
``seq_len − 1`` tokens (a fresh copy of the cache each repeat, copied before the clock
starts). The median of ``repeats`` after one warm-up run, synchronised on CUDA. The
cost outside the layers is the empty decoder's time plus the LM head on ``batch``
positions.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import torch

from minitron.modeling import AttentionConfig, BlockConfig, DeciLMConfig, FFNConfig

EMPTY = BlockConfig(AttentionConfig(no_op=True), FFNConfig(no_op=True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(run, device: torch.device, repeats: int, prepare=None) -> float:
    times = []
    for i in range(repeats + 1):
        state = prepare() if prepare is not None else None
        _sync(device)
        start = time.perf_counter()
        run(state)
        _sync(device)
        if i:  # the first run warms up
            times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


@torch.no_grad()
def time_block(
    parent: DeciLMConfig,
    block: BlockConfig,
    batch: int,
    seq_len: int,
    dtype: torch.dtype,
    device: torch.device,
    repeats: int = 5,
    copies: int = 4,
) -> dict[str, float]:
    """``{"prefill": ms, "decode": ms}`` of the decoder of a model of ``copies`` ``block``s."""
    from minitron.modeling import DeciLMModel
    from minitron.modeling.modeling import DeciLMCache

    config = copy.deepcopy(parent)
    config.num_hidden_layers = copies
    config.block_configs = [block] * copies
    with torch.device(device):
        model = DeciLMModel(config).to(dtype).eval()
    ids = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)
    prefill = _median_ms(lambda _: model(input_ids=ids, use_cache=False), device, repeats)
    primed = DeciLMCache(config=config)
    model(input_ids=ids[:, :-1], use_cache=True, past_key_values=primed)
    decode = _median_ms(
        lambda cache: model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True),
        device, repeats, prepare=lambda: copy.deepcopy(primed),
    )  # fmt: skip
    return {"prefill": prefill, "decode": decode}


@torch.no_grad()
def time_head(parent: DeciLMConfig, batch: int, dtype, device, repeats: int = 5) -> float:
    """The LM head on ``batch`` positions."""
    with torch.device(device):
        head = torch.nn.Linear(parent.hidden_size, parent.vocab_size, bias=False).to(dtype)
        rows = torch.randn(batch, parent.hidden_size, dtype=dtype)
    return _median_ms(lambda _: head(rows), device, repeats)


def measure_runtimes(
    parent: DeciLMConfig,
    blocks: Sequence[BlockConfig],
    batch: int,
    seq_len: int,
    dtype: torch.dtype,
    device: torch.device,
    repeats: int = 5,
    copies: int = 4,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Each block's measured time (``(t_copies − t_empty) / copies``, never below 0) and
    the time outside the layers (the empty decoder plus the LM head)."""
    from minitron.progress import progress

    base = time_block(parent, EMPTY, batch, seq_len, dtype, device, repeats, copies)
    head = time_head(parent, batch, dtype, device, repeats)
    outside = {k: v + head for k, v in base.items()}
    found: dict[str, dict[str, float]] = {}
    keys = [repr(b.to_dict()) for b in blocks]
    with progress("timing block variants", len(set(keys))) as advance:
        for key, block in zip(keys, blocks, strict=True):
            if key not in found:
                own = time_block(parent, block, batch, seq_len, dtype, device, repeats, copies)
                found[key] = {k: max((own[k] - base[k]) / copies, 0.0) for k in own}
                advance(1)
    return [found[k] for k in keys], outside

"""Runtime of each block variant from a roofline: FLOPs and bytes moved, at the device's peaks.

For a block with ``P`` parameters (``P_w`` bytes in the serving dtype), ``n`` query heads
of width ``d``, a KV cache of ``c`` bytes per token, served at ``B`` sequences of ``S``
tokens, with ``H`` the hidden size and ``s`` bytes per value:

- prefill (all ``B·S`` prompt tokens at once): ``FLOPs = 2·P·B·S + 2·B·n·d·S²`` (the
  matmuls, and causal ``QKᵀ`` and ``AV`` over half the ``S × S`` scores);
  ``bytes = P_w + B·S·c`` (the cache written) ``+ 2·B·S·H·s`` (the residual stream read
  and written);
- decode (one new token per sequence with ``S`` tokens of context):
  ``FLOPs = 2·P·B + 4·B·n·d·S``; ``bytes = P_w + B·S·c`` (the cache read) ``+ 2·B·H·s``.

Time is ``max(FLOPs / peak FLOP/s, bytes / peak bandwidth)``: a block is either compute-
or memory-bound. Outside the layers, the LM head runs on the ``B`` last positions in
both phases (its ``V·H`` weights read once). Attention without heads (linear, no_op)
has no ``S²`` term and no cache. A roofline ignores kernel launch and communication
costs; it ranks variants the way a measurement would where they are bound by the same
resource, and is what a search for hardware you do not hold can use.
"""

from __future__ import annotations

from dataclasses import dataclass

from minitron.errors import MinitronError
from minitron.modeling import BlockConfig, DeciLMConfig
from minitron.search.costs import attention_params, ffn_params, kv_heads


@dataclass(frozen=True)
class Peaks:
    """Dense peak compute (TFLOP/s at the serving dtype) and memory bandwidth (GB/s)."""

    tflops: float
    bandwidth_gbs: float


#: Published dense BF16 tensor-core peaks and HBM bandwidths (SXM parts).
HARDWARE = {
    "h100": Peaks(989.0, 3350.0),
    "h200": Peaks(989.0, 4800.0),
    "a100": Peaks(312.0, 2039.0),
}


def peaks_for(hardware: str | None, tflops: float | None, bandwidth_gbs: float | None) -> Peaks:
    """The named hardware's peaks, each overridden where given.

    Raises:
        MinitronError: An unknown name, or neither a name nor both numbers.
    """
    if hardware is not None and hardware not in HARDWARE:
        raise MinitronError(
            f"runtime.hardware must be one of {', '.join(HARDWARE)} (got {hardware!r}); "
            "or give runtime.peak_tflops and runtime.bandwidth_gbs"
        )
    base = HARDWARE.get(hardware or "")
    if tflops is None and base is not None:
        tflops = base.tflops
    bandwidth = bandwidth_gbs
    if bandwidth is None and base is not None:
        bandwidth = base.bandwidth_gbs
    if tflops is None or bandwidth is None or tflops <= 0 or bandwidth <= 0:
        raise MinitronError("runtime: analytic needs runtime.hardware or both positive peaks")
    return Peaks(tflops, bandwidth)


def _ms(flops: float, moved: float, peaks: Peaks) -> float:
    return 1000.0 * max(flops / (peaks.tflops * 1e12), moved / (peaks.bandwidth_gbs * 1e9))


def block_runtime_ms(
    config: DeciLMConfig, block: BlockConfig, batch: int, seq_len: int, size: int, peaks: Peaks
) -> dict[str, float]:
    """``{"prefill": ms, "decode": ms}`` of one layer with this variant (roofline)."""
    params = attention_params(config, block) + ffn_params(config, block)
    hidden = config.hidden_size
    heads = config.num_attention_heads if kv_heads(config, block) else 0
    dims = heads * config.head_dim
    cache = 2 * kv_heads(config, block) * config.head_dim * size
    tokens = batch * seq_len
    prefill_flops = 2 * params * tokens + 2 * batch * dims * seq_len * seq_len
    prefill_bytes = params * size + tokens * cache + 2 * tokens * hidden * size
    decode_flops = 2 * params * batch + 4 * batch * dims * seq_len
    decode_bytes = params * size + tokens * cache + 2 * batch * hidden * size
    return {
        "prefill": _ms(prefill_flops, prefill_bytes, peaks),
        "decode": _ms(decode_flops, decode_bytes, peaks),
    }


def head_runtime_ms(config: DeciLMConfig, batch: int, size: int, peaks: Peaks) -> float:
    """The LM head on ``batch`` positions, the same in both phases (roofline)."""
    weights = config.vocab_size * config.hidden_size
    return _ms(2 * weights * batch, weights * size, peaks)

"""``minitron search``: its typed config and the dry run (library and costs from the config).

The stages that need weights (blockwise distillation of the variants, replace-1-block
scores, the MIP on those scores, realising and re-ranking the solutions) are not built
yet; the dry run plans the library and its costs for a model of any size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from minitron.errors import MinitronError

DTYPE_BYTES = {"float8": 1, "bfloat16": 2, "float16": 2, "float32": 4}
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class AttentionSpaceConfig:
    """Attention variants of every layer.

    Attributes:
        kv_heads: K/V head counts (each must divide the heads).
        linear: Offer attention replaced by one linear map.
        no_op: Offer no attention at all.
    """

    kv_heads: list[int] = dataclasses.field(default_factory=lambda: [8, 4, 2, 1])
    linear: bool = True
    no_op: bool = True


@dataclasses.dataclass(frozen=True)
class FFNSpaceConfig:
    """FFN variants of every layer.

    Attributes:
        ffn_mult: Widths in the format's ``ffn_mult``.
        fractions: Widths as fractions of the parent's (rounded up to 256).
        linear: Offer the FFN replaced by one linear map.
        no_op: Offer no FFN at all.
    """

    ffn_mult: list[float] = dataclasses.field(default_factory=list)
    fractions: list[float] = dataclasses.field(
        default_factory=lambda: [1.0, 0.875, 0.75, 0.5, 0.25, 0.2, 0.1]
    )
    linear: bool = True
    no_op: bool = True


@dataclasses.dataclass(frozen=True)
class ConstraintsConfig:
    """Budgets of the search (any of them).

    Attributes:
        params: Most parameters of the result (counted as ``prune --dry-run`` does).
        memory_gib: Most GiB of weights in the serving dtype plus the KV cache of
            ``batch × seq_len`` tokens.
    """

    params: float | None = None
    memory_gib: float | None = None


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """``minitron search``: the Puzzle search over per-layer block variants.

    Attributes:
        parent: Model spec of the parent (Llama or nemotron-nas).
        attention: Attention variants.
        ffn: FFN variants.
        serve_with: Leave out block kinds this engine cannot serve.
        batch: Sequences served at once (memory and runtime costs).
        seq_len: Tokens per sequence (memory and runtime costs).
        serving_dtype: Weight and KV-cache dtype when served.
        constraints: The budgets.
        solutions: Distinct solutions of the MIP.
        max_shared: Most layer choices a solution shares with each earlier one.
        time_limit: Seconds per MIP solve.
        output: Output folder.
        trust_remote_code: Allow a Hub model's own code to run.
    """

    parent: str
    attention: AttentionSpaceConfig = dataclasses.field(default_factory=AttentionSpaceConfig)
    ffn: FFNSpaceConfig = dataclasses.field(default_factory=FFNSpaceConfig)
    serve_with: Literal["vllm", "trtllm", "llamacpp"] | None = None
    batch: int = 1
    seq_len: int = 4096
    serving_dtype: Literal["float8", "bfloat16", "float16", "float32"] = "bfloat16"
    constraints: ConstraintsConfig = dataclasses.field(default_factory=ConstraintsConfig)
    solutions: int = 1
    max_shared: int | None = None
    time_limit: float = 60.0
    output: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        for key in ("batch", "seq_len", "solutions"):
            if getattr(self, key) < 1:
                raise MinitronError(f"{key} must be at least 1 (got {getattr(self, key)})")
        for key, value in dataclasses.asdict(self.constraints).items():
            if value is not None and not value > 0:
                raise MinitronError(f"constraints.{key} must be above 0 (got {value})")


def plan_library(config: SearchConfig) -> tuple[Any, Any]:
    """The parent as nemotron-nas and its library (from the config alone)."""
    from minitron.io import load_config
    from minitron.modeling import DeciLMConfig, nas_config_from_llama
    from minitron.search.library import AttentionSpace, FFNSpace, build_library

    parent = load_config(config.parent, config.trust_remote_code)
    base = parent if isinstance(parent, DeciLMConfig) else nas_config_from_llama(parent)
    attention = AttentionSpace(tuple(config.attention.kv_heads), config.attention.linear,
                               config.attention.no_op)  # fmt: skip
    ffn = FFNSpace(tuple(config.ffn.ffn_mult), tuple(config.ffn.fractions), config.ffn.linear,
                   config.ffn.no_op)  # fmt: skip
    return base, build_library(base, attention, ffn, config.serve_with)


def library_record(config: SearchConfig) -> dict[str, Any]:
    """``library.json`` of the dry run (scores and runtimes null), budgets checked.

    Raises:
        MinitronError: A bad space or engine, or a budget below the smallest choice.
    """
    from minitron.search.costs import block_cost, non_layer_params
    from minitron.search.mip import smallest

    base, library = plan_library(config)
    size = DTYPE_BYTES[config.serving_dtype]
    layers, params, memory = [], [], []
    for i, blocks in enumerate(library.layers):
        variants, row_p, row_m = [], [], []
        for block in blocks:
            cost = block_cost(base, block, config.batch, config.seq_len, size)
            variants.append({
                "attention": block.attention.to_dict(), "ffn": block.ffn.to_dict(),
                "params": cost.params, "kv_bytes_per_token": cost.kv_bytes_per_token,
                "memory_bytes": cost.memory_bytes, "runtime_ms": None, "score": None,
            })  # fmt: skip
            row_p.append(cost.params)
            row_m.append(cost.memory_bytes)
        layers.append({"layer": i, "variants": variants})
        params.append(row_p)
        memory.append(row_m)
    outside = non_layer_params(base)
    least = {
        "params": smallest(params, outside),
        "memory_gib": smallest(memory, outside * size) / GIB,
    }
    parent_params = outside + sum(
        block_cost(base, b, 1, 1, size).params for b in base.block_configs
    )
    for name, limit in dataclasses.asdict(config.constraints).items():
        if limit is not None and least[name] > limit:
            raise MinitronError(
                f"{name} budget {limit:,.6g} is infeasible: the smallest choice needs "
                f"{least[name]:,.6g}"
            )
    return {
        "parent": config.parent,
        "non_layer_params": outside,
        "parent_params": parent_params,
        "smallest": least,
        "constraints": dataclasses.asdict(config.constraints),
        "batch": config.batch,
        "seq_len": config.seq_len,
        "serving_dtype": config.serving_dtype,
        "layers": layers,
    }

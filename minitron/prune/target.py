"""Prune to a target: the depth x width shapes within a parameter or memory budget.

``shape_params`` counts the parameters of a Llama of a given shape from the
config alone. ``enumerate_candidates`` walks a grid of shapes (layers in steps,
hidden size and MLP width in multiples of a step, attention heads in whole K/V
groups), keeps those within the budget and ranks them by closeness to it.
The command then scores the top ``k`` by held-out KL divergence from the parent
(``heldout_kl``), without training, and prunes the best.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minitron.errors import MinitronError
from minitron.layers import decoder
from minitron.progress import progress
from minitron.prune.width import WidthShape, head_dim_of, parent_shape

GIB = 1024**3


def shape_params(config: Any, layers: int, shape: WidthShape) -> int:
    """Parameters of the parent's architecture at ``layers`` layers and ``shape``'s widths.

    Counts embedding (and an untied LM head), the final norm and per layer two
    norms, q/k/v/o (with ``attention_bias``) and gate/up/down (with ``mlp_bias``).
    """
    hidden, ffn = shape.hidden_size, shape.intermediate_size
    q = shape.num_attention_heads * head_dim_of(config)
    kv = shape.num_key_value_heads * head_dim_of(config)
    embed = config.vocab_size * hidden
    head = 0 if getattr(config, "tie_word_embeddings", False) else embed
    per_layer = 2 * hidden + 2 * hidden * q + 2 * hidden * kv + 3 * hidden * ffn
    if getattr(config, "attention_bias", False):
        per_layer += q + 2 * kv + hidden
    if getattr(config, "mlp_bias", False):
        per_layer += 2 * ffn + hidden
    return embed + head + hidden + layers * per_layer


@dataclass(frozen=True)
class TargetGrid:
    """The shapes a target search considers.

    Attributes:
        layer_step: Layer counts ``L, L - step, ...``.
        hidden_step: Hidden sizes: the parent's and multiples of this below it
            (those the candidate's attention heads divide).
        ffn_step: MLP widths: the parent's and multiples of this below it.
        min_fraction: No dimension (layers, hidden, MLP, K/V groups) goes below
            this fraction of the parent's.
    """

    layer_step: int = 2
    hidden_step: int = 256
    ffn_step: int = 512
    min_fraction: float = 0.5


@dataclass(frozen=True)
class Candidate:
    """One shape of the search, with its size."""

    layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    params: int

    @property
    def shape(self) -> WidthShape:
        return WidthShape(
            self.hidden_size,
            self.intermediate_size,
            self.num_attention_heads,
            self.num_key_value_heads,
        )

    @property
    def bf16_gib(self) -> float:
        return 2 * self.params / GIB

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"bf16_gib": round(self.bf16_gib, 4)}


def budget_params(params: float | None, memory_gib: float | None) -> int:
    """The parameter budget: ``params``, or the bf16 weights that fit ``memory_gib``."""
    if (params is None) == (memory_gib is None):
        raise MinitronError("a target gives exactly one of params or memory_gib")
    if params is not None:
        return int(params)
    return int(memory_gib * GIB // 2)


def _values(parent: int, step: int, floor: int) -> list[int]:
    """The parent's value and the multiples of ``step`` from ``floor`` up, largest first."""
    values = {parent} | set(range(step, parent, step))
    return sorted((v for v in values if v >= floor), reverse=True)


def grid_shapes(config: Any, grid: TargetGrid) -> list[tuple[int, WidthShape]]:
    """Every ``(layers, WidthShape)`` of the grid, the parent's own first."""
    parent = parent_shape(config)
    layers_total = config.num_hidden_layers
    low = grid.min_fraction
    group = parent.num_attention_heads // parent.num_key_value_heads
    depths = [
        n for n in range(layers_total, 0, -grid.layer_step) if n >= math.ceil(low * layers_total)
    ]
    hiddens = _values(parent.hidden_size, grid.hidden_step, math.ceil(low * parent.hidden_size))
    ffns = _values(
        parent.intermediate_size, grid.ffn_step, math.ceil(low * parent.intermediate_size)
    )
    groups = range(parent.num_key_value_heads, math.ceil(low * parent.num_key_value_heads) - 1, -1)
    return [
        (n, WidthShape(h, f, g * group, g))
        for n, h, f, g in itertools.product(depths, hiddens, ffns, groups)
        if h % (g * group) == 0  # transformers' Llama config requires it
    ]


def enumerate_candidates(config: Any, budget: int, grid: TargetGrid) -> list[Candidate]:
    """The grid's shapes within ``budget`` parameters, closest to it first.

    Raises:
        MinitronError: If no shape of the grid fits (the budget is below the smallest).
    """
    fitting, smallest = [], None
    for layers, shape in grid_shapes(config, grid):
        params = shape_params(config, layers, shape)
        smallest = params if smallest is None else min(smallest, params)
        if params <= budget:
            fitting.append(Candidate(layers, *shape.to_dict().values(), params))
    if not fitting:
        raise MinitronError(
            f"target of {budget:,} parameters is below the smallest candidate "
            f"({smallest:,}; lower min_fraction or the grid steps to go smaller)"
        )
    return sorted(fitting, key=lambda c: (budget - c.params, -c.layers, -c.hidden_size))


@torch.no_grad()
def heldout_kl(
    parent: nn.Module, student: nn.Module, batches: Sequence[torch.Tensor], chunk: int = 1024
) -> float:
    """Mean per-token ``KL(parent || student)`` of next-token distributions, in nats.

    Both models run on each ``[B, T]`` batch; the LM heads run ``chunk`` tokens at
    a time so memory stays flat in the vocabulary. Neither model is changed.
    """
    device = next(parent.parameters()).device
    total, count = 0.0, 0
    with progress("held-out KL to the parent", len(batches)) as advance:
        for ids in batches:
            ids = ids.to(device)
            h_parent = decoder(parent)(input_ids=ids, use_cache=False).last_hidden_state
            h_student = decoder(student)(input_ids=ids, use_cache=False).last_hidden_state
            rows_p = h_parent.reshape(-1, h_parent.shape[-1])
            rows_s = h_student.reshape(-1, h_student.shape[-1])
            for a, b in zip(rows_p.split(chunk), rows_s.split(chunk), strict=True):
                log_p = F.log_softmax(parent.lm_head(a).float(), dim=-1)
                log_q = F.log_softmax(student.lm_head(b).float(), dim=-1)
                total += F.kl_div(log_q, log_p, log_target=True, reduction="sum").item()
                count += a.shape[0]
            advance(1)
    return total / count

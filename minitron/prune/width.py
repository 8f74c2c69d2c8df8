"""Width pruning: keep the most important embedding channels, attention heads and MLP neurons.

``plan_width`` turns ``WidthScores`` and a target ``WidthShape`` into the exact
indices to keep; ``slice_model`` builds the smaller model from the parent with
those indices (and, for depth + width, only the kept layers). The parent is not
changed. Every tensor is sliced consistently:

- embedding channels: ``embed_tokens`` and ``lm_head`` columns, every RMSNorm
  weight, the input columns of q/k/v/gate/up and the output rows of o/down;
- attention heads, whole (``head_dim`` is kept and written to the config): the
  rows of q (query heads) and k/v (their K/V heads), the columns of o;
- MLP neurons: the rows of gate/up and the columns of down.

GQA stays valid: query head ``h`` reads K/V head ``h // group`` (transformers'
``repeat_kv``), so heads are kept as whole K/V groups, each keeping the same
number of query heads. The result is the parent's own class (``LlamaForCausalLM``)
with a config stock ``transformers`` reads.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from minitron.errors import MinitronError
from minitron.importance.width import WidthScores
from minitron.prune.depth import per_layer_updates


@dataclass(frozen=True)
class WidthShape:
    """The widths of a pruned model (every layer the same, as a Llama config holds)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def head_dim_of(config: Any) -> int:
    """The parent's per-head width: ``head_dim`` if set, else hidden / heads (Llama's rule)."""
    value = getattr(config, "head_dim", None)
    return int(value) if value else config.hidden_size // config.num_attention_heads


def parent_shape(config: Any) -> WidthShape:
    """The widths of ``config`` itself."""
    heads = config.num_attention_heads
    return WidthShape(
        config.hidden_size,
        config.intermediate_size,
        heads,
        getattr(config, "num_key_value_heads", None) or heads,
    )


def requested_shape(config: Any, **widths: int | None) -> WidthShape:
    """The parent's shape with the given widths replaced (``None``: keep the parent's).

    ``num_key_value_heads`` left out keeps the parent's K/V heads when the query
    heads still divide into them (fewer query heads per group), and otherwise
    keeps the parent's group size (fewer whole groups).
    """
    parent = parent_shape(config)
    values = {k: v for k, v in widths.items() if v is not None}
    shape = WidthShape(**(parent.to_dict() | values))
    if widths.get("num_key_value_heads") is None and "num_attention_heads" in values:
        heads = shape.num_attention_heads
        group = parent.num_attention_heads // parent.num_key_value_heads
        kv = parent.num_key_value_heads if heads % parent.num_key_value_heads == 0 else None
        if kv is None and heads % group == 0:
            kv = heads // group
        if kv is not None:
            shape = WidthShape(**(shape.to_dict() | {"num_key_value_heads": kv}))
    return shape


def check_shape(config: Any, shape: WidthShape) -> None:
    """Refuse a shape the parent cannot be cut to, in one line naming the problem.

    ``head_dim`` is kept, so the hidden size need not be ``heads * head_dim``; but
    transformers' ``LlamaConfig`` refuses a hidden size that is not a multiple of
    the number of attention heads (it derived ``head_dim`` from them before
    ``head_dim`` was a field), so that is required.

    Raises:
        MinitronError: A width above the parent's or below 1; a hidden size that is
            not a multiple of the attention heads; query heads that do not split
            evenly over the K/V heads; more query heads per K/V group than the
            parent's groups have.
    """
    parent = parent_shape(config)
    for key, value in shape.to_dict().items():
        before = getattr(parent, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MinitronError(f"{key} must be a positive integer (got {value!r})")
        if value > before:
            raise MinitronError(f"{key} {value} is more than the parent's {before}")
    heads, kv = shape.num_attention_heads, shape.num_key_value_heads
    if heads % kv:
        raise MinitronError(
            f"num_attention_heads {heads} does not split evenly over num_key_value_heads {kv}"
        )
    group = parent.num_attention_heads // parent.num_key_value_heads
    if heads // kv > group:
        raise MinitronError(
            f"{heads} query heads over {kv} K/V heads is {heads // kv} per group, but the "
            f"parent's groups have {group} (keep more K/V heads: at least {-(-heads // group)})"
        )

    if shape.hidden_size % heads:
        low, high = _multiples_around(shape.hidden_size, heads)
        raise MinitronError(
            f"hidden_size {shape.hidden_size} is not a multiple of num_attention_heads {heads} "
            f"(transformers' Llama config requires it; nearest: {low} or {high})"
        )


def _multiples_around(value: int, step: int) -> tuple[int, int]:
    low = value // step * step
    return max(low, step), low + step


@dataclass
class WidthPlan:
    """The parent indices each pruned tensor keeps; ascending within each list.

    Attributes:
        layers: Parent index of each kept decoder layer (depth pruning), in order.
        hidden: Kept embedding channels.
        heads: Per kept layer, kept query heads.
        kv_heads: Per kept layer, kept K/V heads.
        neurons: Per kept layer, kept MLP neurons.
    """

    layers: list[int]
    hidden: list[int]
    heads: list[list[int]]
    kv_heads: list[list[int]]
    neurons: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _top(scores: Sequence[float], count: int) -> list[int]:
    """Indices of the ``count`` highest scores, ascending (ties: lower index first)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:count])


def select_heads(
    scores: Sequence[float], kv_heads: int, new_heads: int, new_kv: int
) -> tuple[list[int], list[int]]:
    """Kept query heads and K/V heads of one layer.

    Within each K/V group the query heads are ranked by score and the best
    ``new_heads / new_kv`` kept; the groups are ranked by the sum of those kept
    heads' scores and the best ``new_kv`` kept.
    """
    group = len(scores) // kv_heads
    per_group = new_heads // new_kv
    best_in_group = [_top(scores[g * group : (g + 1) * group], per_group) for g in range(kv_heads)]
    value = [sum(scores[g * group + h] for h in best_in_group[g]) for g in range(kv_heads)]
    groups = _top(value, new_kv)
    heads = [g * group + h for g in groups for h in best_in_group[g]]
    return heads, groups


def plan_width(
    scores: WidthScores, shape: WidthShape, layers: Sequence[int] | None = None
) -> WidthPlan:
    """The channels, heads and neurons to keep: the top-ranked of each kind.

    Args:
        scores: Width importance of the model being cut (after any layers were
            dropped, so ``scores.heads[i]`` belongs to its ``i``-th layer).
        shape: The target widths (checked with ``check_shape``).
        layers: Parent index of each scored layer (default ``0..L-1``).
    """
    layers = list(range(scores.num_layers)) if layers is None else list(layers)
    if len(layers) != scores.num_layers:
        raise MinitronError(f"{len(layers)} layer indices for {scores.num_layers} scored layers")
    heads, kv = [], []
    for row, kv_count in zip(scores.heads, scores.num_key_value_heads, strict=True):
        kept_heads, kept_kv = select_heads(
            row, kv_count, shape.num_attention_heads, shape.num_key_value_heads
        )
        heads.append(kept_heads)
        kv.append(kept_kv)
    return WidthPlan(
        layers=layers,
        hidden=_top(scores.hidden, shape.hidden_size),
        heads=heads,
        kv_heads=kv,
        neurons=[_top(row, shape.intermediate_size) for row in scores.neurons],
    )


def first_k_plan(config: Any, shape: WidthShape, layers: Sequence[int]) -> WidthPlan:
    """The plan keeping the first channels, groups and neurons (a baseline; dry runs)."""
    group = config.num_attention_heads // parent_shape(config).num_key_value_heads
    per_group = shape.num_attention_heads // shape.num_key_value_heads
    kv = list(range(shape.num_key_value_heads))
    heads = [g * group + h for g in kv for h in range(per_group)]
    return WidthPlan(
        layers=list(layers),
        hidden=list(range(shape.hidden_size)),
        heads=[heads for _ in layers],
        kv_heads=[kv for _ in layers],
        neurons=[list(range(shape.intermediate_size)) for _ in layers],
    )


def random_plan(
    config: Any, shape: WidthShape, layers: Sequence[int], generator: torch.Generator
) -> WidthPlan:
    """A plan keeping random channels, groups and neurons (a baseline for importance)."""

    def pick(total: int, count: int) -> list[int]:
        return sorted(torch.randperm(total, generator=generator)[:count].tolist())

    parent = parent_shape(config)
    group = parent.num_attention_heads // parent.num_key_value_heads
    per_group = shape.num_attention_heads // shape.num_key_value_heads
    heads, kv = [], []
    for _ in layers:
        groups = pick(parent.num_key_value_heads, shape.num_key_value_heads)
        kv.append(groups)
        heads.append([g * group + h for g in groups for h in pick(group, per_group)])
    return WidthPlan(
        layers=list(layers),
        hidden=pick(parent.hidden_size, shape.hidden_size),
        heads=heads,
        kv_heads=kv,
        neurons=[pick(parent.intermediate_size, shape.intermediate_size) for _ in layers],
    )


def pruned_config(config: Any, plan: WidthPlan) -> Any:
    """The parent's config with the plan's layers and widths; ``head_dim`` written out.

    Raises:
        MinitronError: If the layers keep different widths (a Llama config has one).
    """
    for name, rows in (("heads", plan.heads), ("K/V heads", plan.kv_heads)):
        if len({len(row) for row in rows}) > 1:
            raise MinitronError(f"every layer must keep the same number of {name}")
    if len({len(row) for row in plan.neurons}) > 1:
        raise MinitronError("every layer must keep the same number of MLP neurons")
    num_layers = config.num_hidden_layers
    new = copy.deepcopy(config)
    for key, value in per_layer_updates(config, plan.layers, num_layers).items():
        setattr(new, key, value)
    new.num_hidden_layers = len(plan.layers)
    new.head_dim = head_dim_of(config)
    new.hidden_size = len(plan.hidden)
    new.intermediate_size = len(plan.neurons[0])
    new.num_attention_heads = len(plan.heads[0])
    new.num_key_value_heads = len(plan.kv_heads[0])
    return new


def _head_rows(heads: Sequence[int], head_dim: int) -> list[int]:
    return [h * head_dim + d for h in heads for d in range(head_dim)]


def _tensor_slices(plan: WidthPlan, head_dim: int) -> dict[str, tuple[Any, Any]]:
    """``(rows, columns)`` each parameter keeps, by name within one decoder layer or the model.

    ``None`` keeps the whole dimension. ``L`` in a name is the kept layer's new index.
    """
    hidden = plan.hidden
    slices: dict[str, tuple[Any, Any]] = {
        "model.embed_tokens.weight": (None, hidden),
        "model.norm.weight": (hidden, None),
        "lm_head.weight": (None, hidden),
    }
    for new, (heads, kv, neurons) in enumerate(
        zip(plan.heads, plan.kv_heads, plan.neurons, strict=True)
    ):
        q_rows, kv_rows = _head_rows(heads, head_dim), _head_rows(kv, head_dim)
        prefix = f"model.layers.{new}."
        slices |= {
            prefix + "input_layernorm.weight": (hidden, None),
            prefix + "post_attention_layernorm.weight": (hidden, None),
            prefix + "self_attn.q_proj.weight": (q_rows, hidden),
            prefix + "self_attn.q_proj.bias": (q_rows, None),
            prefix + "self_attn.k_proj.weight": (kv_rows, hidden),
            prefix + "self_attn.k_proj.bias": (kv_rows, None),
            prefix + "self_attn.v_proj.weight": (kv_rows, hidden),
            prefix + "self_attn.v_proj.bias": (kv_rows, None),
            prefix + "self_attn.o_proj.weight": (hidden, q_rows),
            prefix + "self_attn.o_proj.bias": (hidden, None),
            prefix + "mlp.gate_proj.weight": (neurons, hidden),
            prefix + "mlp.gate_proj.bias": (neurons, None),
            prefix + "mlp.up_proj.weight": (neurons, hidden),
            prefix + "mlp.up_proj.bias": (neurons, None),
            prefix + "mlp.down_proj.weight": (hidden, neurons),
            prefix + "mlp.down_proj.bias": (hidden, None),
        }
    return slices


def _take(tensor: torch.Tensor, rows: Any, cols: Any) -> torch.Tensor:
    if rows is not None:
        tensor = tensor.index_select(0, torch.tensor(rows, device=tensor.device))
    if cols is not None:
        tensor = tensor.index_select(1, torch.tensor(cols, device=tensor.device))
    return tensor.contiguous()


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def slice_model(model: nn.Module, plan: WidthPlan) -> nn.Module:
    """A new model of the parent's class holding the plan's layers, channels, heads, neurons.

    The parent is not changed; the new model's weights are copies of slices of
    the parent's (same dtype and device). A parent on the meta device gives a
    meta model (dry runs count its parameters). Modules without parameters
    (the rotary embedding) are copied from the parent.

    Raises:
        MinitronError: If the parent has a parameter this does not know how to slice.
    """
    config = pruned_config(model.config, plan)
    head_dim = config.head_dim
    slices = _tensor_slices(plan, head_dim)
    parent = model.state_dict()
    layer_map = {new: old for new, old in enumerate(plan.layers)}
    with torch.device("meta"):
        pruned = type(model)(config)
    state = {}
    for name in pruned.state_dict():
        match = _LAYER.match(name)
        source = (
            name
            if match is None
            else f"model.layers.{layer_map[int(match[1])]}.{name[match.end() :]}"
        )
        if name not in slices:
            raise MinitronError(f"minitron does not know how to width-prune '{name}'")
        if source not in parent:
            continue  # tied lm_head: restored by tie_weights below
        state[name] = _take(parent[source], *slices[name])
    pruned.load_state_dict(state, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        pruned.tie_weights()
    _copy_parameterless(model, pruned, layer_map)
    pruned.eval()
    if getattr(model, "generation_config", None) is not None:
        pruned.generation_config = copy.deepcopy(model.generation_config)
    on_meta = next(model.parameters()).is_meta
    left = [n for n, t in [*pruned.named_parameters(), *pruned.named_buffers()] if t.is_meta]
    if left and not on_meta:
        raise MinitronError(f"width prune left tensors unset: {', '.join(left[:3])}")
    return pruned


def _copy_parameterless(parent: nn.Module, pruned: nn.Module, layer_map: dict[int, int]) -> None:
    """Replace modules with buffers but no parameters (rotary tables) by the parent's copies."""
    modules = dict(parent.named_modules())
    for name, module in list(pruned.named_modules()):
        own_buffers = list(module.buffers(recurse=False))
        if not own_buffers or list(module.parameters(recurse=False)):
            continue
        match = _LAYER.match(name + ".")
        source = (
            name
            if match is None
            else _LAYER.sub(f"model.layers.{layer_map[int(match[1])]}.", name + ".")[:-1]
        )
        if source in modules:
            _set_submodule(pruned, name, copy.deepcopy(modules[source]))


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)

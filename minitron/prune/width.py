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
    """The widths of ``config`` itself (nemotron-nas: ``None`` for the per-block widths)."""
    heads = config.num_attention_heads
    if is_nas(config):
        return WidthShape(config.hidden_size, None, heads, None)
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
    if is_nas(config):
        return _requested_nas(config, **widths)
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


def _requested_nas(config: Any, **widths: int | None) -> WidthShape:
    """A nemotron-nas parent: hidden size and heads across all layers, tied by ``head_dim``.

    Raises:
        MinitronError: For per-block widths (FFN, K/V heads: block edits cut those), or a
            hidden size and head count that do not keep the parent's ``head_dim``.
    """
    for key in ("intermediate_size", "num_key_value_heads"):
        if widths.get(key) is not None:
            raise MinitronError(
                f"{key}: nemotron-nas layers have their own FFN widths and K/V heads; "
                "cut those with block edits (rules) and give hidden_size here"
            )
    head_dim = head_dim_of(config)
    hidden, heads = widths.get("hidden_size"), widths.get("num_attention_heads")
    if hidden is not None and heads is None:
        if hidden % head_dim:
            raise MinitronError(
                f"hidden_size {hidden} is not a multiple of head_dim {head_dim}: nemotron-nas "
                "derives head_dim from hidden_size / num_attention_heads"
            )
        heads = hidden // head_dim
    hidden = heads * head_dim if hidden is None and heads is not None else hidden
    return WidthShape(hidden or config.hidden_size, None, heads or config.num_attention_heads, None)


def _check_nas_shape(config: Any, shape: WidthShape) -> None:
    head_dim = head_dim_of(config)
    hidden, heads = shape.hidden_size, shape.num_attention_heads
    if hidden != heads * head_dim:
        raise MinitronError(
            f"hidden_size {hidden} with {heads} heads changes head_dim {head_dim}: nemotron-nas "
            f"derives it from hidden_size / num_attention_heads (use {heads * head_dim})"
        )
    for i, block in enumerate(config.block_configs):
        if not block.attention.has_heads:
            continue
        group = block.attention.n_heads_in_group
        kv = config.num_attention_heads // group
        if heads % kv and heads % group:
            raise MinitronError(
                f"layer {i}: {heads} heads fit neither its {kv} K/V heads nor its groups "
                f"of {group} query heads"
            )


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
        if before is None and value is None:
            continue  # nemotron-nas: per-block widths
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MinitronError(f"{key} must be a positive integer (got {value!r})")
        if value > before:
            raise MinitronError(f"{key} {value} is more than the parent's {before}")
    if is_nas(config):
        _check_nas_shape(config, shape)
        return
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
        if not row:  # a nemotron-nas layer without softmax attention
            heads.append([])
            kv.append([])
            continue
        new_kv = shape.num_key_value_heads or _nas_kv(kv_count, len(row), shape)
        kept_heads, kept_kv = select_heads(row, kv_count, shape.num_attention_heads, new_kv)
        heads.append(kept_heads)
        kv.append(kept_kv)
    width = shape.intermediate_size
    return WidthPlan(
        layers=layers,
        hidden=_top(scores.hidden, shape.hidden_size),
        heads=heads,
        kv_heads=kv,
        neurons=[_top(row, width) if width else list(range(len(row))) for row in scores.neurons],
    )


def _nas_kv(kv: int, heads: int, shape: WidthShape) -> int:
    """A nemotron-nas layer's K/V heads after the cut: its own when the new query heads
    divide over them (fewer per group), else its own group size kept (fewer groups)."""
    new_heads = shape.num_attention_heads
    return kv if new_heads % kv == 0 else new_heads // (heads // kv)


def first_k_plan(config: Any, shape: WidthShape, layers: Sequence[int]) -> WidthPlan:
    """The plan keeping the first channels, groups and neurons (a baseline; dry runs)."""
    return plan_width(uniform_scores(config, layers), shape, layers)


def uniform_scores(config: Any, layers: Sequence[int]) -> WidthScores:
    """Equal scores for every unit of the ``layers`` of ``config`` (ties keep the first)."""
    heads, kv, neurons = [], [], []
    for i in layers:
        if is_nas(config):
            block = config.block_configs[i]
            count = config.kv_heads(i) or 0
            width = block.ffn.intermediate_size(config.hidden_size) or 0
        else:
            count = parent_shape(config).num_key_value_heads
            width = config.intermediate_size
        heads.append([0.0] * (config.num_attention_heads if count else 0))
        kv.append(count)
        neurons.append([0.0] * width)
    return WidthScores([0.0] * config.hidden_size, heads, neurons, kv)


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
    if is_nas(config):
        return _pruned_nas_config(config, plan)
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


def is_nas(config: Any) -> bool:
    """True for a nemotron-nas (DeciLM) config: its layers have their own blocks."""
    return getattr(config, "block_configs", None) is not None


def _pruned_nas_config(config: Any, plan: WidthPlan) -> Any:
    """A nemotron-nas config for the plan: hidden and heads across all layers; each kept
    block keeps its FFN width (``ffn_mult`` rewritten for the new hidden size) and its
    query heads per K/V head follow from the kept heads."""
    from minitron.modeling import BlockConfig, intermediate_size_to_ffn_mult

    hidden = len(plan.hidden)
    heads = next((len(row) for row in plan.heads if row), config.num_attention_heads)
    blocks = []
    for new, old in enumerate(plan.layers):
        block = config.block_configs[old].to_dict()
        if plan.kv_heads[new]:
            block["attention"]["n_heads_in_group"] = heads // len(plan.kv_heads[new])
        if plan.neurons[new]:
            width = len(plan.neurons[new])
            block["ffn"]["ffn_mult"] = intermediate_size_to_ffn_mult(width, hidden)
        blocks.append(BlockConfig.from_dict(block).to_dict())
    data = config.to_dict() | {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_hidden_layers": len(plan.layers),
        "block_configs": blocks,
    }
    new_config = type(config).from_dict(data)
    new_config._attn_implementation = config._attn_implementation
    return new_config


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
            prefix + "self_attn.linear_attn.weight": (hidden, hidden),  # nemotron-nas
            prefix + "mlp.linear_mlp.weight": (hidden, hidden),
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

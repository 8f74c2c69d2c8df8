"""Per-layer block configs from a recipe: a full ``block_configs`` list, or rules.

A rule edits a set of layers (0-indexed)::

    {layers: all, ffn_mult: 2.625}             # every FFN to width ffn_mult
    {layers: 40-70, attention: no_op}          # layers 40..70, both ends included
    {layers: [1, 3, "10-12"], kv_heads: 1}     # attention kept, one K/V head
    {layers: 25, attention: linear}

Keys: ``layers`` (required: ``all``, an int, ``"a-b"`` or a list of those);
``attention``: keep | no_op | linear, with ``n_heads_in_group`` or ``kv_heads`` for a
kept attention; ``ffn``: keep | no_op | linear, with ``ffn_mult`` for a kept FFN.
A rule that names any attention key sets the layer's whole attention sub-block
(``keep`` alone = the parent's attention); the same for the FFN. Rules apply in
order, so a later rule overrides an earlier one for the sub-blocks it names.
Everything here reads configs only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from minitron.config import choice_error
from minitron.errors import MinitronError
from minitron.modeling import AttentionConfig, BlockConfig, DeciLMConfig, FFNConfig

RULE_KEYS = ("layers", "attention", "n_heads_in_group", "kv_heads", "ffn", "ffn_mult")
KINDS = ("keep", "no_op", "linear")


def parse_layers(value: Any, num_layers: int, where: str) -> list[int]:
    """Layer indices from ``all``, an int, ``"a-b"`` (inclusive) or a list of those.

    Raises:
        MinitronError: On another form, a reversed range or an index outside
            ``0..num_layers-1``.
    """
    if value == "all":
        return list(range(num_layers))
    items = value if isinstance(value, list) else [value]
    if not items:
        raise MinitronError(f"{where}: layers is an empty list")
    layers: list[int] = []
    for item in items:
        layers.extend(_layer_item(item, num_layers, where))
    return sorted(set(layers))


def _layer_item(item: Any, num_layers: int, where: str) -> list[int]:
    bad = MinitronError(
        f"{where}: layers must be all, an index, 'a-b' or a list of those (got {item!r})"
    )
    if isinstance(item, bool):
        raise bad
    if isinstance(item, int):
        first = last = item
    elif isinstance(item, str) and item.count("-") == 1:
        low, high = (part.strip() for part in item.split("-"))
        if not (low.isdigit() and high.isdigit()):
            raise bad
        first, last = int(low), int(high)
        if first > last:
            raise MinitronError(f"{where}: layer range {item!r} runs backwards")
    else:
        raise bad
    for index in (first, last):
        if not 0 <= index < num_layers:
            raise MinitronError(
                f"{where}: layer {index} out of range: the parent has {num_layers} layers "
                f"(0..{num_layers - 1}, 0-indexed)"
            )
    return list(range(first, last + 1))


def resolve_rules(parent: DeciLMConfig, rules: Sequence[Any]) -> list[BlockConfig]:
    """The block config of every layer after applying ``rules`` to ``parent``'s blocks.

    Args:
        parent: The parent's nemotron-nas config (``nas_config_from_llama`` for a Llama).
        rules: Rule mappings, applied in order.

    Raises:
        MinitronError: One line naming the rule and the key: an unknown key or kind,
            a layer out of range, a head count that does not divide the heads, an
            option that does not fit the kind, a rule that changes nothing.
    """
    if not rules:
        raise MinitronError("rules: give at least one rule")
    blocks = list(parent.block_configs)
    for n, rule in enumerate(rules):
        where = f"rules[{n}]"
        if not isinstance(rule, dict):
            raise MinitronError(f"{where}: expected a mapping such as {{layers: all, ffn_mult: 2}}")
        for key in rule:
            if key not in RULE_KEYS:
                raise MinitronError(
                    f"{where}: unknown key {key!r} (known keys: {', '.join(RULE_KEYS)})"
                )
        if "layers" not in rule:
            raise MinitronError(f"{where}: missing key 'layers' (all, an index, 'a-b' or a list)")
        layers = parse_layers(rule["layers"], parent.num_hidden_layers, where)
        attention = _rule_attention(rule, parent, where)
        ffn = _rule_ffn(rule, where)
        if attention is None and ffn is None:
            raise MinitronError(f"{where}: the rule changes nothing (give attention or ffn keys)")
        for i in layers:
            base = parent.block_configs[i]
            if attention is not None:
                blocks[i] = replace(blocks[i], attention=attention(base.attention))
            if ffn is not None:
                blocks[i] = replace(blocks[i], ffn=ffn(base.ffn))
    return blocks


def _kind(rule: dict, key: str, options: tuple[str, ...], where: str) -> str:
    kind = rule.get(key, "keep")
    if kind not in KINDS or not isinstance(kind, str):
        raise choice_error(f"{where}: {key}", kind, KINDS)
    for option in options:
        if option in rule and kind != "keep":
            raise MinitronError(f"{where}: {option} needs {key}: keep (got {key}: {kind})")
    return kind


def _rule_attention(rule: dict, parent: DeciLMConfig, where: str):
    """A function parent attention -> new attention, or None if the rule has no attention key."""
    options = ("n_heads_in_group", "kv_heads")
    if not any(k in rule for k in ("attention", *options)):
        return None
    kind = _kind(rule, "attention", options, where)
    if kind == "no_op":
        return lambda _: AttentionConfig(no_op=True)
    if kind == "linear":
        return lambda _: AttentionConfig(replace_with_linear=True)
    if all(k in rule for k in options):
        raise MinitronError(f"{where}: give n_heads_in_group or kv_heads, not both")
    group = _group(rule, parent.num_attention_heads, where)
    if group is None:
        return lambda base: base
    return lambda _: AttentionConfig(n_heads_in_group=group)


def _group(rule: dict, heads: int, where: str) -> int | None:
    """``n_heads_in_group`` asked for by the rule (from kv_heads if given), or None."""
    for key in ("n_heads_in_group", "kv_heads"):
        if key not in rule:
            continue
        value = rule[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MinitronError(f"{where}: {key} must be an integer >= 1 (got {value!r})")
        if heads % value:
            raise MinitronError(
                f"{where}: {key} {value} does not divide the parent's {heads} attention heads"
            )
        return value if key == "n_heads_in_group" else heads // value
    return None


def _rule_ffn(rule: dict, where: str):
    """A function parent FFN -> new FFN, or None if the rule has no FFN key."""
    if "ffn" not in rule and "ffn_mult" not in rule:
        return None
    kind = _kind(rule, "ffn", ("ffn_mult",), where)
    if kind == "no_op":
        return lambda _: FFNConfig(no_op=True)
    if kind == "linear":
        return lambda _: FFNConfig(replace_with_linear=True)
    if "ffn_mult" not in rule:
        return lambda base: base
    mult = rule["ffn_mult"]
    if not isinstance(mult, int | float) or isinstance(mult, bool) or not mult > 0:
        raise MinitronError(f"{where}: ffn_mult must be a number > 0 (got {mult!r})")
    return lambda _: FFNConfig(ffn_mult=float(mult))


def resolve_block_configs(parent: DeciLMConfig, block_configs: Sequence[Any]) -> list[BlockConfig]:
    """A full ``block_configs`` list (published JSON shape, missing keys default), checked.

    Raises:
        MinitronError: On a length other than the parent's layer count, an unknown key
            (named with its layer) or a group size that does not divide the heads.
    """
    if len(block_configs) != parent.num_hidden_layers:
        raise MinitronError(
            f"block_configs has {len(block_configs)} entries, the parent has "
            f"{parent.num_hidden_layers} layers"
        )
    blocks = [_block(b, f"block_configs[{i}]") for i, b in enumerate(block_configs)]
    heads = parent.num_attention_heads
    for i, block in enumerate(blocks):
        group = block.attention.n_heads_in_group
        if block.attention.has_heads and heads % group:
            raise MinitronError(
                f"block_configs[{i}]: n_heads_in_group {group} does not divide the parent's "
                f"{heads} attention heads"
            )
    return blocks


def _block(entry: Any, where: str) -> BlockConfig:
    """``BlockConfig.from_dict`` whose errors always name the entry."""
    try:
        return BlockConfig.from_dict(entry, where)
    except MinitronError as err:
        if str(err).startswith(where):
            raise
        raise MinitronError(f"{where}: {err}") from None


def runs_of_blocks(labels: Sequence[Any]) -> list[tuple[int, int, Any]]:
    """Group consecutive equal ``labels``: ``[(first, last, label), ...]`` (0-indexed)."""
    runs: list[tuple[int, int, Any]] = []
    for i, label in enumerate(labels):
        if runs and runs[-1][2] == label and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i, label)
        else:
            runs.append((i, i, label))
    return runs

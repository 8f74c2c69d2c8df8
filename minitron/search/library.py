"""The Puzzle block library: per layer, every (attention, FFN) variant a search may pick.

Attention variants: K/V heads from a list (those that divide the heads; a variant is
``n_heads_in_group = heads // kv``), ``linear`` (``x + W·norm(x)``) and ``no_op``. FFN
variants: widths as ``ffn_mult`` values or fractions of the parent's width (rounded the
format's way, to multiples of 256), ``linear`` and ``no_op``. Each layer offers every
combination, less those the engine named by ``serve_with`` cannot serve. Costs of each
sub-block come from the config alone (``minitron.search.costs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from minitron.errors import MinitronError
from minitron.modeling import (
    AttentionConfig,
    BlockConfig,
    DeciLMConfig,
    FFNConfig,
    ffn_mult_to_intermediate_size,
    intermediate_size_to_ffn_mult,
)
from minitron.nas.engines import ENGINES, NAMES, refused_kinds


@dataclass(frozen=True)
class AttentionSpace:
    """Attention variants: ``kv_heads`` counts, and the linear and no_op kinds."""

    kv_heads: tuple[int, ...] = (8, 4, 2, 1)
    linear: bool = True
    no_op: bool = True


@dataclass(frozen=True)
class FFNSpace:
    """FFN variants: ``ffn_mult`` values and/or ``fractions`` of the parent's width."""

    ffn_mult: tuple[float, ...] = ()
    fractions: tuple[float, ...] = (1.0, 0.875, 0.75, 0.5, 0.25, 0.2, 0.1)
    linear: bool = True
    no_op: bool = True


def attention_variants(parent: DeciLMConfig, space: AttentionSpace) -> list[AttentionConfig]:
    """The attention sub-block variants of ``space`` for a parent with its heads.

    Raises:
        MinitronError: A K/V head count that does not divide the heads, or none left.
    """
    heads = parent.num_attention_heads
    variants = []
    for kv in space.kv_heads:
        if kv < 1 or heads % kv:
            raise MinitronError(
                f"attention.kv_heads: {kv} K/V heads do not divide the parent's {heads} heads"
            )
        variants.append(AttentionConfig(n_heads_in_group=heads // kv))
    if space.linear:
        variants.append(AttentionConfig(replace_with_linear=True))
    if space.no_op:
        variants.append(AttentionConfig(no_op=True))
    if not variants:
        raise MinitronError("attention: the search space has no variant")
    return variants


def ffn_variants(parent: DeciLMConfig, space: FFNSpace, width: int) -> list[FFNConfig]:
    """The FFN variants of ``space`` for a parent whose widest FFN is ``width``."""
    hidden = parent.hidden_size
    widths = {ffn_mult_to_intermediate_size(m, hidden) for m in space.ffn_mult}
    for fraction in space.fractions:
        if not 0 < fraction <= 1:
            raise MinitronError(f"ffn.fractions: {fraction} is not in (0, 1]")
        widths.add(ffn_mult_to_intermediate_size(1.5 * fraction * width / hidden, hidden))
    variants = [
        FFNConfig(ffn_mult=intermediate_size_to_ffn_mult(w, hidden))
        for w in sorted(widths, reverse=True)
    ]
    if space.linear:
        variants.append(FFNConfig(replace_with_linear=True))
    if space.no_op:
        variants.append(FFNConfig(no_op=True))
    if not variants:
        raise MinitronError("ffn: the search space has no variant")
    return variants


@dataclass(frozen=True)
class Library:
    """The variants of every layer: ``layers[i]`` lists layer ``i``'s blocks."""

    parent: DeciLMConfig
    layers: list[list[BlockConfig]]


def build_library(
    parent: DeciLMConfig,
    attention: AttentionSpace,
    ffn: FFNSpace,
    serve_with: str | None = None,
) -> Library:
    """Every (attention, FFN) combination each layer offers, less what the engine refuses.

    The widest FFN of the parent sets what ``fractions`` mean (a Llama parent has one
    width). Variants are listed per layer because engines refuse some kinds in some
    layers only (llama.cpp: no attention no_op in layer 0).

    Raises:
        MinitronError: A bad space, an unknown engine, or a layer left with no variant.
    """
    if serve_with is not None and serve_with not in ENGINES:
        raise MinitronError(f"serve_with must be one of {', '.join(ENGINES)} (got {serve_with!r})")
    widths = [b.ffn.intermediate_size(parent.hidden_size) or 0 for b in parent.block_configs]
    attn = attention_variants(parent, attention)
    mlp = ffn_variants(parent, ffn, max(widths) or parent.hidden_size * 4)
    if serve_with is not None:
        _refuse_unservable(parent, attn, mlp, serve_with)
    layers = []
    for i in range(parent.num_hidden_layers):
        blocks = [BlockConfig(a, f) for a in attn for f in mlp]
        if serve_with is not None:
            blocks = [b for b in blocks if not refused_kinds(serve_with, i, b)]
        if not blocks:
            raise MinitronError(f"layer {i}: {serve_with} serves none of the variants")
        layers.append(blocks)
    return Library(parent, layers)


def _refuse_unservable(parent: DeciLMConfig, attn, mlp, engine: str) -> None:
    """A kind the recipe asks for that the engine serves in no layer is a bad request
    (kinds refused in some layers only, like llama.cpp's attention no_op in layer 0,
    are left out of those layers)."""
    layers = range(parent.num_hidden_layers)
    for half, variants, other in (("attention", attn, mlp[0]), ("ffn", mlp, attn[0])):
        for variant in variants:
            block = (
                BlockConfig(variant, other) if half == "attention" else BlockConfig(other, variant)
            )
            refused = [refused_kinds(engine, i, block) for i in layers]
            own = [r for r in refused if any(k.lower().startswith(half) for k in r)]
            if len(own) == len(refused):
                kind = "linear" if variant.replace_with_linear else "no_op"
                raise MinitronError(
                    f"serve_with {engine}: {NAMES[engine]} cannot serve {half} {kind} in any "
                    f"layer; set {half}.{kind}: false"
                )


def find_block(blocks: Sequence[BlockConfig], block: BlockConfig) -> int | None:
    """Index of ``block`` in a layer's variants (``None`` when the library lacks it)."""
    for index, candidate in enumerate(blocks):
        if candidate == block:
            return index
    return None

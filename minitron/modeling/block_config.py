"""Per-layer block configs of the nemotron-nas (DeciLM) format, as frozen dataclasses.

One ``BlockConfig`` per decoder layer: an ``AttentionConfig`` and an ``FFNConfig``.
``to_dict`` / ``from_dict`` use exactly the JSON shape of the published checkpoints
(every key present, ``null`` where unset), so a config written here is read by the
engines that serve nemotron-nas models.

Kinds of sub-block:
- attention: ``n_heads_in_group`` query heads share one K/V head
  (kv heads = num_attention_heads // n_heads_in_group); ``no_op`` (nothing at all);
  ``replace_with_linear`` (``x + W · norm(x)``).
- FFN: SwiGLU of width ``ffn_mult_to_intermediate_size(ffn_mult, hidden)``; ``no_op``;
  ``replace_with_linear``.

Published features that minitron does not implement (sliding windows, sink tokens,
``sparsify``) are refused with a one-line ``MinitronError`` naming the feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from minitron.errors import MinitronError


def _find_multiple(n: int, k: int) -> int:
    """The smallest multiple of ``k`` that is >= ``n``."""
    return n if n % k == 0 else n + k - n % k


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """FFN width of the format: ``int(2 * ffn_mult * hidden / 3)`` rounded up to 256."""
    return _find_multiple(int(2 * ffn_mult * hidden_size / 3), 256)


def intermediate_size_to_ffn_mult(intermediate_size: int, hidden_size: int) -> float:
    """The ``ffn_mult`` whose width is exactly ``intermediate_size``.

    Widths of the format are multiples of 256; ``3 * I / (2 * hidden)`` then maps back
    to ``I`` exactly (float error can only take ``int(...)`` to ``I - 1``, which rounds
    up to ``I`` again). Checked, not assumed.

    Raises:
        MinitronError: If ``intermediate_size`` is not a positive multiple of 256.
    """
    mult = 3 * intermediate_size / (2 * hidden_size)
    if intermediate_size <= 0 or ffn_mult_to_intermediate_size(mult, hidden_size) != (
        intermediate_size
    ):
        raise MinitronError(
            f"FFN width {intermediate_size} cannot be written in the nemotron-nas format: "
            f"its widths are int(2*ffn_mult*hidden/3) rounded up to a multiple of 256"
        )
    return mult


def _unknown_keys(cls: type, data: dict[str, Any], where: str) -> None:
    if not isinstance(data, dict):
        raise MinitronError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        names = ", ".join(sorted(known))
        raise MinitronError(f"{where}: unknown key {unknown[0]!r} (known: {names})")


@dataclass(frozen=True)
class AttentionConfig:
    """The attention sub-block of one layer (published key names)."""

    n_heads_in_group: int | None = None
    no_op: bool = False
    num_sink_tokens: int | None = None
    replace_with_linear: bool = False
    sparsify: Any = None
    unshifted_sink: bool = False
    use_prefill_window_in_sink_attention: bool = False
    window_length: int | None = None

    def __post_init__(self) -> None:
        unsupported = {
            "window_length (sliding-window attention)": self.window_length is not None,
            "num_sink_tokens (attention sinks)": self.num_sink_tokens is not None,
            "unshifted_sink (attention sinks)": bool(self.unshifted_sink),
            "use_prefill_window_in_sink_attention": bool(self.use_prefill_window_in_sink_attention),
            "attention sparsify": bool(self.sparsify),
        }
        for feature, present in unsupported.items():
            if present:
                raise MinitronError(f"unsupported nemotron-nas feature: {feature}")
        if self.no_op and self.replace_with_linear:
            raise MinitronError("attention: no_op and replace_with_linear are both set")
        if self.has_heads:
            n = self.n_heads_in_group
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise MinitronError(f"attention: n_heads_in_group must be an integer >= 1: {n!r}")

    @property
    def has_heads(self) -> bool:
        """True for real (softmax) attention, which holds a KV cache."""
        return not (self.no_op or self.replace_with_linear)

    @property
    def kind(self) -> str:
        """``attention``, ``linear`` or ``no_op``."""
        return "no_op" if self.no_op else "linear" if self.replace_with_linear else "attention"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "attention") -> AttentionConfig:
        _unknown_keys(cls, data, where)
        return cls(**data)


@dataclass(frozen=True)
class FFNConfig:
    """The FFN sub-block of one layer (published key names)."""

    ffn_mult: float | None = None
    no_op: bool = False
    replace_with_linear: bool = False
    sparsify: Any = None

    def __post_init__(self) -> None:
        if self.sparsify:
            raise MinitronError("unsupported nemotron-nas feature: ffn sparsify")
        if self.no_op and self.replace_with_linear:
            raise MinitronError("ffn: no_op and replace_with_linear are both set")
        if self.has_mlp:
            m = self.ffn_mult
            ok = isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m)
            if not ok or m <= 0:
                raise MinitronError(f"ffn: ffn_mult must be a number > 0, got {m!r}")

    @property
    def has_mlp(self) -> bool:
        """True for a real (SwiGLU) FFN."""
        return not (self.no_op or self.replace_with_linear)

    @property
    def kind(self) -> str:
        """``ffn``, ``linear`` or ``no_op``."""
        return "no_op" if self.no_op else "linear" if self.replace_with_linear else "ffn"

    def intermediate_size(self, hidden_size: int) -> int | None:
        """The FFN width, or None when the FFN is not a SwiGLU."""
        return ffn_mult_to_intermediate_size(self.ffn_mult, hidden_size) if self.has_mlp else None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "ffn") -> FFNConfig:
        _unknown_keys(cls, data, where)
        return cls(**data)


@dataclass(frozen=True)
class BlockConfig:
    """One decoder layer: its attention and its FFN."""

    attention: AttentionConfig
    ffn: FFNConfig

    def to_dict(self) -> dict[str, Any]:
        return {"attention": self.attention.to_dict(), "ffn": self.ffn.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | BlockConfig, where: str = "block") -> BlockConfig:
        """Parse the published JSON shape (missing keys take their defaults)."""
        if isinstance(data, BlockConfig):
            return data
        _unknown_keys(cls, data, where)
        return cls(
            attention=AttentionConfig.from_dict(data.get("attention", {}), f"{where}.attention"),
            ffn=FFNConfig.from_dict(data.get("ffn", {}), f"{where}.ffn"),
        )

    def describe(self) -> str:
        """A short label such as ``attn g8 + ffn 2.625`` for tables and records."""
        a = self.attention
        attn = f"attn g{a.n_heads_in_group}" if a.has_heads else f"attn {a.kind}"
        ffn = f"ffn {self.ffn.ffn_mult:g}" if self.ffn.has_mlp else f"ffn {self.ffn.kind}"
        return f"{attn} + {ffn}"

"""Narrower (or wider) FFNs that keep the most active intermediate channels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from minitron.errors import MinitronError
from minitron.modeling import ffn_mult_to_intermediate_size
from minitron.modeling.modeling import DeciLMMLP
from minitron.nas.blocks import build_like, nas_layer, set_ffn
from minitron.nas.calibrate import ChannelStats, hooks, input_hook, run_batches


def ffn_channel_importance(
    model: nn.Module, layer: int, batches: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Mean |act(gate(x)) * up(x)| of each intermediate channel of ``layer``'s FFN.

    Measured on the input of ``down_proj`` over every token of the calibration
    ``batches`` (each ``[B, T]`` token ids). Does not change the model.

    Returns:
        ``[intermediate_size]`` float64 scores on the CPU.
    """
    mlp = _swiglu(model, layer)
    stats = ChannelStats()
    with hooks([input_hook(mlp.down_proj, stats.add)]):
        run_batches(model, batches, last_layer=layer)
    return stats.mean()


def resize_ffn(model: nn.Module, layer: int, ffn_mult: float, importance: torch.Tensor) -> None:
    """Set ``layer``'s FFN to the width of ``ffn_mult``, keeping the top channels. In place.

    Narrower: the channels with the largest ``importance`` are kept (in their original
    order), the rest dropped. Wider: every channel is kept and new ones are added with
    ``down_proj`` columns of zero, so the layer computes the same function as before
    (their gate/up rows are random so that training can use them).

    Args:
        importance: ``[current width]`` scores, e.g. from ``ffn_channel_importance``.
    """
    mlp = _swiglu(model, layer)
    config = model.config
    width = ffn_mult_to_intermediate_size(ffn_mult, config.hidden_size)
    old_width = mlp.intermediate_size
    if importance.shape != (old_width,):
        raise MinitronError(f"layer {layer}: {importance.numel()} scores for {old_width} channels")
    new = build_like(lambda: DeciLMMLP(config, width), mlp.gate_proj.weight)
    keep = torch.topk(importance, min(width, old_width)).indices.sort().values
    keep = keep.to(mlp.gate_proj.weight.device)
    with torch.no_grad():
        if width > old_width:
            for name in ("gate_proj", "up_proj"):
                getattr(new, name).weight.normal_(0.0, config.initializer_range)
            new.down_proj.weight.zero_()
        for name in ("gate_proj", "up_proj"):
            _copy_rows(getattr(mlp, name), getattr(new, name), keep)
        new.down_proj.weight[:, : len(keep)] = mlp.down_proj.weight[:, keep]
        if mlp.down_proj.bias is not None:
            new.down_proj.bias.copy_(mlp.down_proj.bias)
    new.train(mlp.training)
    set_ffn(model, layer, new, ffn_mult=ffn_mult)


def narrow_ffn(
    model: nn.Module, layer: int, ffn_mult: float, batches: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Score ``layer``'s channels on ``batches``, then ``resize_ffn``. In place.

    Returns:
        The ``[old width]`` channel importance used.
    """
    importance = ffn_channel_importance(model, layer, batches)
    resize_ffn(model, layer, ffn_mult, importance)
    return importance


def _copy_rows(src: nn.Linear, dst: nn.Linear, keep: torch.Tensor) -> None:
    dst.weight[: len(keep)] = src.weight[keep]
    if src.bias is not None:
        dst.bias.zero_()
        dst.bias[: len(keep)] = src.bias[keep]


def _swiglu(model: nn.Module, layer: int) -> DeciLMMLP:
    target = nas_layer(model, layer)
    if target.ffn_kind != "ffn":
        raise MinitronError(f"layer {layer}: the FFN is {target.ffn_kind}, not a SwiGLU FFN")
    return target.mlp

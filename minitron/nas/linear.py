"""Attention or FFN replaced by one linear layer fitted by least squares.

A linear sub-block computes ``x + W · norm(x)``. ``W`` is fitted on calibration
activations of the current model: sub-block input after its norm -> sub-block
output (before the residual add), in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from minitron.errors import MinitronError
from minitron.modeling.modeling import DeciLMLinearAttention, DeciLMLinearMLP
from minitron.nas.blocks import build_like, like, nas_layer, set_attention, set_ffn
from minitron.nas.calibrate import RIDGE, LinearFit, hooks, io_hook, run_batches


def sub_block(model: nn.Module, layer: int, part: str) -> nn.Module:
    """The ``attention`` (``self_attn``) or ``ffn`` (``mlp``) module of ``layer``.

    Raises:
        MinitronError: If that sub-block is a no_op (nothing to fit on).
    """
    target = nas_layer(model, layer)
    name = {"attention": "self_attn", "ffn": "mlp"}[part]
    if not hasattr(target, name):
        raise MinitronError(f"layer {layer}: the {part} is a no_op; nothing to fit a linear map to")
    return getattr(target, name)


def fit_sub_block(
    model: nn.Module, layer: int, part: str, batches: Sequence[torch.Tensor]
) -> LinearFit:
    """Normal equations of ``part``'s input (after norm) -> output on ``batches``.

    Does not change the model.
    """
    fit = LinearFit()
    with hooks([io_hook(sub_block(model, layer, part), fit.add)]):
        run_batches(model, batches, last_layer=layer)
    return fit


def set_linear_attention(model: nn.Module, layer: int, weight: torch.Tensor) -> None:
    """Make ``layer``'s attention ``x + W · norm(x)`` with ``weight`` [H, H]. In place.

    The layer's ``input_layernorm`` is kept (a no_op attention gets a fresh one).
    """
    norm = _norm(model, layer, "input_layernorm")
    module = build_like(lambda: DeciLMLinearAttention(model.config), norm.weight)
    with torch.no_grad():
        module.linear_attn.weight.copy_(weight)
    changes = dict(replace_with_linear=True, no_op=False, n_heads_in_group=None)
    set_attention(model, layer, module, **changes)


def set_linear_ffn(model: nn.Module, layer: int, weight: torch.Tensor) -> None:
    """Make ``layer``'s FFN ``x + W · norm(x)`` with ``weight`` [H, H]. In place."""
    norm = _norm(model, layer, "post_attention_layernorm")
    module = build_like(lambda: DeciLMLinearMLP(model.config), norm.weight)
    with torch.no_grad():
        module.linear_mlp.weight.copy_(weight)
    set_ffn(model, layer, module, replace_with_linear=True, no_op=False, ffn_mult=None)


def attention_to_linear(
    model: nn.Module, layer: int, batches: Sequence[torch.Tensor], ridge: float = RIDGE
) -> float:
    """Replace ``layer``'s attention by a least-squares linear map. In place.

    Args:
        batches: Calibration token ids, each ``[B, T]``.
        ridge: Ridge strength relative to the mean diagonal of XᵀX (see ``LinearFit``).

    Returns:
        The fit's relative error Σ|y - Wx|² / Σ|y|² on the calibration tokens.
    """
    fit = fit_sub_block(model, layer, "attention", batches)
    weight = fit.solve(ridge)
    set_linear_attention(model, layer, weight)
    return fit.relative_error(weight)


def ffn_to_linear(
    model: nn.Module, layer: int, batches: Sequence[torch.Tensor], ridge: float = RIDGE
) -> float:
    """Replace ``layer``'s FFN by a least-squares linear map. In place.

    Returns:
        The fit's relative error Σ|y - Wx|² / Σ|y|² on the calibration tokens.
    """
    fit = fit_sub_block(model, layer, "ffn", batches)
    weight = fit.solve(ridge)
    set_linear_ffn(model, layer, weight)
    return fit.relative_error(weight)


def _norm(model: nn.Module, layer: int, name: str) -> nn.Module:
    """The layer's norm ``name``; a fresh one (weight 1) where a no_op had none."""
    target = nas_layer(model, layer)
    if not hasattr(target, name):
        final = model.model.norm
        norm = type(final)(model.config.hidden_size, eps=model.config.rms_norm_eps)
        setattr(target, name, like(norm, final.weight))
    return getattr(target, name)

"""Access to the decoder stack of a Llama-family causal LM, layer by layer.

``trace`` runs the model once and records the residual stream between layers
together with the keyword arguments the model passed each layer (rotary
embeddings, causal or sliding-window mask, positions). ``run_layers`` then replays any subset of
layers from any recorded point, which is what lets importance scoring reuse an
unchanged prefix instead of re-running it. The model's own forward is used for
the trace, so masks and rotary settings are always the model's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minitron.errors import MinitronError, first_line


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (``model.model`` for Llama): has ``layers`` and ``norm``."""
    inner = getattr(model, "model", None)
    if inner is None or not isinstance(getattr(inner, "layers", None), nn.ModuleList):
        raise MinitronError(
            f"{type(model).__name__} is not a Llama-family causal LM (no model.layers)"
        )
    return inner


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers, in order."""
    return decoder(model).layers


@dataclass
class Trace:
    """The residual stream of one batch.

    Attributes:
        hidden: ``L + 1`` tensors ``[B, T, H]``; ``hidden[i]`` enters layer ``i`` and
            ``hidden[L]`` leaves the last layer (before the final norm). Empty when
            the trace was streamed to a callback instead of kept.
        layer_kwargs: Every argument the model passed each decoder layer besides
            the hidden state, by parameter name, by layer index (positional ones
            are named too; layers of different attention types get different masks).
    """

    hidden: list[torch.Tensor]
    layer_kwargs: list[dict[str, Any]]


@torch.no_grad()
def trace(
    model: nn.Module,
    input_ids: torch.Tensor,
    on_state: Callable[[int, torch.Tensor], None] | None = None,
    keep: bool = True,
) -> Trace:
    """Run ``model`` on ``input_ids`` [B, T] once, recording the residual stream.

    Args:
        model: A Llama-family causal LM; not changed.
        input_ids: ``[B, T]`` token ids.
        on_state: Called as ``on_state(i, hidden)`` for ``i = 0..L`` as each
            residual state becomes available (for streaming statistics).
        keep: Keep every state in the returned ``Trace`` (needed to replay).

    Returns:
        The ``Trace`` of this batch.
    """
    layers = decoder_layers(model)
    states: list[torch.Tensor] = []
    captured: list[dict[str, Any]] = [{} for _ in layers]

    def record(index: int, hidden: torch.Tensor) -> None:
        if keep:
            states.append(hidden)
        if on_state is not None:
            on_state(index, hidden)

    def before(index: int):
        def hook(module, args, kwargs):
            hidden, captured[index] = _split_call(module, args, kwargs)
            record(index, hidden)

        return hook

    def after_last(_module, _args, _kwargs, output):
        record(len(layers), _first(output))

    handles = [
        layer.register_forward_pre_hook(before(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    handles.append(layers[-1].register_forward_hook(after_last, with_kwargs=True))
    try:
        decoder(model)(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return Trace(states, captured)


def _split_call(
    layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A layer call's hidden state, and every other argument by parameter name.

    Models pass the attention mask and positions positionally or by keyword;
    binding them to the layer's signature keeps them all for the replay.

    Raises:
        MinitronError: If the layer takes extra positional arguments (``*args``)
            that cannot be named, so a replay could not reproduce the call.
    """
    try:
        bound = inspect.signature(layer.forward).bind(*args, **kwargs)
    except TypeError as err:
        raise MinitronError(
            f"cannot record the call of {type(layer).__name__}: {first_line(err)}"
        ) from None
    named = dict(bound.arguments)
    for name, param in inspect.signature(layer.forward).parameters.items():
        if param.kind is inspect.Parameter.VAR_POSITIONAL and named.pop(name, ()):
            raise MinitronError(
                f"{type(layer).__name__} was called with unnamed positional arguments; "
                "minitron cannot replay it"
            )
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            named.update(named.pop(name, {}))
    first = next(iter(inspect.signature(layer.forward).parameters))
    return named.pop(first), named


def _first(output: Any) -> torch.Tensor:
    """A layer's hidden-state output (older transformers return a tuple)."""
    return output[0] if isinstance(output, tuple | list) else output


@torch.no_grad()
def run_layers(
    model: nn.Module,
    hidden: torch.Tensor,
    layer_kwargs: list[dict[str, Any]],
    indices: Iterable[int],
) -> torch.Tensor:
    """Apply decoder layers ``indices`` in order to ``hidden`` [B, T, H].

    Each layer gets the keyword arguments the model gave it in the trace.
    """
    layers = decoder_layers(model)
    for i in indices:
        hidden = _first(layers[i](hidden, **layer_kwargs[i]))
    return hidden


# Config fields of models whose logits are not ``lm_head(norm(h))``: Gemma-2/3
# soft-cap them, Cohere and Granite scale them.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@torch.no_grad()
def check_plain_head(model: nn.Module) -> None:
    """Refuse a model whose logits are not its LM head applied to the decoder output.

    ``head_nll`` (and every chunked loss built like it) applies ``lm_head`` to
    the decoder's normed output itself, for memory. A model that soft-caps or
    scales its logits in its own forward would be scored wrongly, so it is
    refused: by the known config fields, then by comparing the model's own
    logits with ``lm_head(decoder(x))`` on a short probe. Does not change the model.

    Raises:
        MinitronError: Naming the config field or saying the logits differ.
    """
    config = model.config
    for key in LOGIT_TRANSFORMS:
        value = getattr(config, key, None)
        if value is not None and value != 1:
            raise MinitronError(
                f"{type(model).__name__} transforms its logits ({key}={value}); "
                "minitron computes logits as lm_head(hidden) and does not support such models"
            )
    device = next(model.parameters()).device
    probe = (torch.arange(8, device=device) % config.vocab_size)[None]  # [1, 8]
    own = model(input_ids=probe, use_cache=False).logits.float()
    ours = model.lm_head(decoder(model)(input_ids=probe, use_cache=False).last_hidden_state)
    if not torch.allclose(own, ours.float(), rtol=1e-2, atol=1e-2 * own.abs().max().item()):
        raise MinitronError(
            f"{type(model).__name__}'s logits are not lm_head(final hidden state); "
            "minitron's chunked LM head would score it wrongly"
        )


@torch.no_grad()
def head_nll(
    model: nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    normed: bool = False,
    chunk_tokens: int = 1024,
) -> tuple[float, int]:
    """Summed next-token NLL of ``input_ids`` [B, T] and the number of predictions.

    Args:
        model: The causal LM whose final norm and LM head are applied.
        hidden: ``[B, T, H]`` residual state leaving the last layer, or the
            decoder's normed output when ``normed``.
        input_ids: The tokens; position ``t`` predicts token ``t + 1``.
        normed: ``hidden`` already went through the final norm.
        chunk_tokens: Tokens per LM-head call; ``[chunk, V]`` float32 logits are
            the largest temporary (a whole batch of 128k-vocab logits would be
            gigabytes).
    """
    states = hidden[:, :-1] if normed else decoder(model).norm(hidden[:, :-1])
    states = states.reshape(-1, hidden.shape[-1])  # [B*(T-1), H]
    targets = input_ids[:, 1:].reshape(-1).to(states.device)  # [B*(T-1)]
    total = 0.0
    for rows, labels in zip(states.split(chunk_tokens), targets.split(chunk_tokens), strict=True):
        logits = model.lm_head(rows)  # [chunk, V]
        total += F.cross_entropy(logits.float(), labels, reduction="sum").item()
    return total, targets.numel()

"""Width importance: how much each MLP neuron, attention head and embedding channel matters.

Activation-based, as in the Minitron paper (Muralidharan et al. 2024, section 2.2),
from forward hooks over calibration data, with the paper's best aggregation:
the mean of ``|x|`` over the sequence, then the L2 norm over the batch.
For a statistic ``x[b, t, i]`` of channel ``i``:

    score[i] = sqrt( sum_b ( mean_t |x[b, t, i]| )^2 )

- **MLP neuron** ``i`` of a layer: ``x`` is the input of ``down_proj`` (the
  activated ``act(gate) * up``), neuron by neuron.
- **Attention head** ``h`` of a layer: ``x`` is the L2 norm over ``head_dim`` of
  head ``h``'s slice of the input of ``o_proj`` (the head's attention output).
- **Embedding channel** ``i``: ``x`` is channel ``i`` of the output of each
  RMSNorm that feeds attention or the MLP (``input_layernorm``,
  ``post_attention_layernorm``); the per-norm scores are summed over layers.

Sequences are full (packed calibration text, no padding), so every position counts.
One forward pass per batch; nothing but ``[B, width]`` sums is kept per hook.
Layers without ``self_attn.o_proj`` (a nemotron-nas no-op or linear attention)
or without ``mlp.down_proj`` get empty head or neuron rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from minitron.errors import MinitronError
from minitron.layers import decoder_layers
from minitron.progress import progress

KINDS = ("hidden", "heads", "neurons")


@dataclass
class WidthScores:
    """Activation importance of every width unit; higher = more important.

    Attributes:
        hidden: Score of each embedding channel (summed over layers and norms).
        heads: ``heads[layer][h]``: score of query head ``h`` of each decoder layer.
        neurons: ``neurons[layer][i]``: score of MLP neuron ``i`` of each layer.
        num_key_value_heads: K/V heads of each layer (query heads ``h`` share K/V
            head ``h // (len(heads[layer]) // num_key_value_heads[layer])``).
        sequences: Calibration sequences seen.
        tokens: Calibration tokens seen.
    """

    hidden: list[float]
    heads: list[list[float]]
    neurons: list[list[float]]
    num_key_value_heads: list[int]
    sequences: int = 0
    tokens: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (the content of ``scores.json`` for ``--metric width``)."""
        return {
            "metric": "width",
            "aggregation": "mean |x| over the sequence, L2 norm over the batch",
            "higher_is_more_important": True,
            "layer_indexing": "0-indexed",
            "num_layers": self.num_layers,
            "hidden": self.hidden,
            "heads": self.heads,
            "neurons": self.neurons,
            "num_key_value_heads": self.num_key_value_heads,
            "sequences": self.sequences,
            "tokens": self.tokens,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> WidthScores:
        """Rebuild scores from ``scores.json`` content.

        Raises:
            MinitronError: If the record is not width scores.
        """
        if record.get("metric") != "width":
            raise MinitronError(f"not width scores (metric is {record.get('metric')!r})")
        try:
            hidden = [float(v) for v in record["hidden"]]
            heads = [[float(v) for v in row] for row in record["heads"]]
            neurons = [[float(v) for v in row] for row in record["neurons"]]
            kv = [int(v) for v in record["num_key_value_heads"]]
        except (KeyError, TypeError, ValueError):
            raise MinitronError("width scores are missing a field or have the wrong type") from None
        if not len(heads) == len(neurons) == len(kv):
            raise MinitronError("width scores: heads, neurons and K/V heads differ in layers")
        return cls(hidden, heads, neurons, kv, record.get("sequences", 0), record.get("tokens", 0))


class _Accumulator:
    """Sum over batches of ``(mean_t |x[b, t, i]|)^2``, per channel, in float64 on the CPU."""

    def __init__(self) -> None:
        self.sum_sq: torch.Tensor | None = None

    def add(self, per_position: torch.Tensor) -> None:
        """``per_position``: ``[B, T, C]`` non-negative statistics of ``C`` channels."""
        per_sequence = per_position.float().mean(dim=1)  # [B, C]
        batch = per_sequence.double().square().sum(dim=0).cpu()  # [C]
        self.sum_sq = batch if self.sum_sq is None else self.sum_sq + batch

    def scores(self) -> list[float]:
        return [] if self.sum_sq is None else self.sum_sq.sqrt().tolist()


def _input_hook(acc: _Accumulator, transform: Callable[[torch.Tensor], torch.Tensor]):
    def hook(_module: nn.Module, args: tuple) -> None:
        acc.add(transform(args[0].detach()))

    return hook


def _output_hook(acc: _Accumulator):
    def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        acc.add(out.detach().abs())

    return hook


def _head_norms(head_dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``[B, T, heads * head_dim]`` -> ``[B, T, heads]``: each head's L2 norm."""

    def norms(x: torch.Tensor) -> torch.Tensor:
        b, t, width = x.shape
        return x.float().reshape(b, t, width // head_dim, head_dim).norm(dim=-1)

    return norms


@torch.no_grad()
def width_importance(model: nn.Module, batches: Sequence[torch.Tensor]) -> WidthScores:
    """Score every embedding channel, attention head and MLP neuron of ``model``.

    Args:
        model: A Llama-family causal LM in eval mode; not changed (hooks are
            removed on return, even after an exception).
        batches: ``[B, T]`` token-id batches of calibration text.

    Returns:
        ``WidthScores``; see the module docstring for the formulas.
    """
    if not batches:
        raise MinitronError("no calibration data to score with")
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    hidden = [_Accumulator() for _ in range(2 * len(layers))]
    heads = [_Accumulator() for _ in layers]
    neurons = [_Accumulator() for _ in layers]
    kv_heads: list[int] = []
    handles = []
    try:
        for i, layer in enumerate(layers):
            for j, name in enumerate(("input_layernorm", "post_attention_layernorm")):
                norm = getattr(layer, name, None)
                if norm is not None:
                    handles.append(norm.register_forward_hook(_output_hook(hidden[2 * i + j])))
            attn = getattr(layer, "self_attn", None)
            o_proj = getattr(attn, "o_proj", None)
            if o_proj is not None:
                head_dim = attn.head_dim
                hook = _input_hook(heads[i], _head_norms(head_dim))
                handles.append(o_proj.register_forward_pre_hook(hook))
                kv_heads.append(attn.k_proj.out_features // head_dim)
            else:
                kv_heads.append(0)
            down = getattr(getattr(layer, "mlp", None), "down_proj", None)
            if down is not None:
                handles.append(down.register_forward_pre_hook(_input_hook(neurons[i], torch.abs)))
        sequences = tokens = 0
        with progress("width importance: forward passes", len(batches)) as advance:
            for ids in batches:
                model(input_ids=ids.to(device), use_cache=False)
                sequences += ids.shape[0]
                tokens += ids.numel()
                advance(1)
    finally:
        for handle in handles:
            handle.remove()
    per_norm = [acc.scores() for acc in hidden if acc.sum_sq is not None]
    summed = torch.tensor(per_norm, dtype=torch.float64).sum(dim=0).tolist() if per_norm else []
    return WidthScores(
        hidden=summed,
        heads=[acc.scores() for acc in heads],
        neurons=[acc.scores() for acc in neurons],
        num_key_value_heads=kv_heads,
        sequences=sequences,
        tokens=tokens,
    )

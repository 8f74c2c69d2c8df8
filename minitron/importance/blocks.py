"""Depth importance: how much each decoder layer, or block of layers, matters.

Three metrics, all with "higher score = more important", layers 0-indexed:

- ``bi`` (Block Importance, Minitron / ShortGPT): mean over tokens of
  ``1 - cos(h_in, h_out)`` between the residual stream entering a block and
  leaving it. One forward pass per batch, read by hooks.
- ``angular`` (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper
  Layers"): mean over tokens of ``arccos(cos(h_l, h_{l+n})) / pi`` between the
  stream entering layer ``l`` and leaving layer ``l+n-1``; every start ``l`` in
  the same single pass.
- ``loss`` (Minitron): mean next-token loss of the model with the layer or block
  removed. The residual stream of the full model is traced once per batch and
  each candidate resumes from the state before its first removed layer, so only
  the layers after the removed block are run again (see ``layer_forward_cost``).

Every metric scores both single layers and contiguous blocks of ``block_size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minitron.errors import MinitronError
from minitron.layers import check_plain_head, decoder_layers, head_nll, run_layers, trace
from minitron.progress import progress

METRICS = ("bi", "angular", "loss")


@dataclass
class ImportanceResult:
    """Scores of single layers and of contiguous blocks; higher = more important.

    Attributes:
        metric: ``bi``, ``angular`` or ``loss``.
        num_layers: Decoder layers in the scored model.
        block_size: Layers per block in ``blocks``.
        layers: Score of each single layer, indexed by layer (0-indexed); empty
            when single layers were not asked for.
        blocks: Score of the block starting at each layer ``0..L-block_size``.
        baseline_loss: ``loss`` metric only: the unpruned model's mean loss.
        tokens: Calibration tokens scored (``loss`` averages over the ``T - 1``
            predicted positions of each sequence, the others over every token).
    """

    metric: str
    num_layers: int
    block_size: int
    layers: list[float]
    blocks: list[float]
    baseline_loss: float | None = None
    tokens: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    def block(self, start: int) -> list[int]:
        """The layers of the block starting at ``start``."""
        return list(range(start, start + self.block_size))

    def least_important_block(self) -> int:
        """Start of the contiguous block whose removal matters least."""
        return min(range(len(self.blocks)), key=self.blocks.__getitem__)

    def least_important_layers(self, count: int) -> list[int]:
        """The ``count`` individually least important layers, ascending index."""
        if not self.layers:
            return []
        ranked = sorted(range(self.num_layers), key=self.layers.__getitem__)
        return sorted(ranked[:count])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (the content of ``scores.json``)."""
        record = asdict(self)
        record["layer_indexing"] = "0-indexed"
        record["higher_is_more_important"] = True
        start = self.least_important_block()
        record["least_important_block"] = self.block(start)
        record["least_important_layers"] = self.least_important_layers(self.block_size)
        if self.metric == "loss":
            record["baseline_perplexity"] = math.exp(self.baseline_loss)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ImportanceResult:
        """Rebuild a result from ``scores.json`` content.

        Raises:
            TypeError: If a field is missing or has the wrong type.
        """
        names = cls.__dataclass_fields__
        for key, check in _FIELD_TYPES.items():
            if key in record and not check(record[key]):
                raise TypeError(f"scores field '{key}' has the wrong type")
        return cls(**{k: v for k, v in record.items() if k in names})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_FIELD_TYPES = {
    "metric": lambda v: v in METRICS or (isinstance(v, str) and v.startswith("task:")),
    "num_layers": lambda v: _is_int(v) and v > 0,
    "block_size": lambda v: _is_int(v) and v > 0,
    "layers": lambda v: isinstance(v, list) and all(map(_is_number, v)),
    "blocks": lambda v: isinstance(v, list) and all(map(_is_number, v)),
    "baseline_loss": lambda v: v is None or _is_number(v),
    "tokens": _is_int,
}


def layer_forward_cost(num_layers: int, block_sizes: Sequence[int]) -> dict[str, int]:
    """Decoder-layer forwards per batch for the ``loss`` metric.

    With ``L`` layers and block size ``n`` there are ``L - n + 1`` candidates.
    Naively each runs the whole pruned model: ``(L - n + 1)(L - n)`` layer
    forwards, plus ``L`` for the baseline. Reusing the traced prefix, candidate
    ``s`` runs only layers ``s + n .. L - 1``: ``L + (L - n)(L - n + 1) / 2`` in
    all, about half. Several block sizes share one trace.

    Returns:
        ``{"reuse": ..., "naive": ...}`` layer forwards for one batch.
    """
    reuse = naive = num_layers
    for n in sorted(set(block_sizes)):
        reuse += (num_layers - n) * (num_layers - n + 1) // 2
        naive += (num_layers - n + 1) * (num_layers - n)
    return {"reuse": reuse, "naive": naive}


def check_block_size(num_layers: int, block_size: int) -> None:
    """Reject a block size outside ``1 .. L-1``."""
    if not 1 <= block_size < num_layers:
        raise MinitronError(
            f"block size must be between 1 and {num_layers - 1} for a {num_layers}-layer model "
            f"(got {block_size})"
        )


@torch.no_grad()
def similarity_scores(
    model: nn.Module, batches: Sequence[torch.Tensor], metric: str, block_sizes: Sequence[int]
) -> tuple[dict[int, list[float]], int]:
    """``bi`` or ``angular`` scores of every block of each size, one pass per batch.

    Does not change the model. Only the last ``max(block_sizes) + 1`` residual
    states are held at a time.

    Returns:
        ``({size: [score of block starting at l for l in 0..L-size]}, tokens)``.
    """
    num_layers = len(decoder_layers(model))
    sums = {n: [0.0] * (num_layers - n + 1) for n in block_sizes}
    tokens = 0
    with progress(f"{metric}: forward passes", len(batches)) as advance:
        for ids in batches:
            on_state = _block_distances(sums, metric)
            trace(model, ids.to(_device(model)), on_state=on_state, keep=False)
            tokens += ids.numel()
            advance(1)
    return {n: [s / tokens for s in row] for n, row in sums.items()}, tokens


def _block_distances(sums: dict[int, list[float]], metric: str):
    """An ``on_state`` callback adding each block's distance into ``sums[size][start]``.

    State ``j`` closes the block of size ``n`` that started at ``j - n``; states
    older than the largest block are dropped as soon as no block needs them.
    """
    recent: dict[int, torch.Tensor] = {}
    window = max(sums)

    def on_state(j: int, hidden: torch.Tensor) -> None:
        recent[j] = hidden
        for n, row in sums.items():
            if j - n in recent:
                row[j - n] += _distance(recent[j - n], hidden, metric)
        recent.pop(j - window, None)

    return on_state


def _distance(h_in: torch.Tensor, h_out: torch.Tensor, metric: str) -> float:
    """Summed per-token distance between two residual states [B, T, H]."""
    cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)  # [B, T]
    if metric == "bi":
        return (1.0 - cos).double().sum().item()
    return (torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).double().sum().item()


@torch.no_grad()
def loss_scores(
    model: nn.Module, batches: Sequence[torch.Tensor], block_sizes: Sequence[int]
) -> tuple[float, dict[int, list[float]], int]:
    """Mean LM loss with each block of each size removed, reusing the prefix.

    Does not change the model. Per batch: one traced forward of the full
    model (``L`` layer forwards), then for the block ``s .. s+n-1`` only layers
    ``s+n .. L-1`` are run from the traced state entering layer ``s``. Cost:
    ``layer_forward_cost(L, block_sizes)["reuse"]`` layer forwards per batch
    instead of ``["naive"]``, plus one LM head per candidate either way.

    Returns:
        ``(baseline_loss, {size: [loss with block starting at l removed]}, tokens)``,
        losses averaged over all predicted tokens.
    """
    check_plain_head(model)
    num_layers = len(decoder_layers(model))
    sums = {n: [0.0] * (num_layers - n + 1) for n in block_sizes}
    baseline = 0.0
    count = 0
    steps = len(batches) * sum(len(row) for row in sums.values())
    with progress("loss: candidates scored", steps) as advance:
        for ids in batches:
            ids = ids.to(_device(model))
            traced = trace(model, ids)
            nll, predicted = head_nll(model, traced.hidden[num_layers], ids)
            baseline += nll
            count += predicted
            for n, row in sums.items():
                for start in range(len(row)):
                    kept_suffix = range(start + n, num_layers)
                    hidden = run_layers(
                        model, traced.hidden[start], traced.layer_kwargs, kept_suffix
                    )
                    row[start] += head_nll(model, hidden, ids)[0]
                    advance(1)
    scores = {n: [s / count for s in row] for n, row in sums.items()}
    return baseline / count, scores, sum(ids.numel() for ids in batches)


def compute_importance(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    metric: str,
    block_size: int = 1,
    single_layers: bool = True,
) -> ImportanceResult:
    """Score every contiguous block of ``block_size`` and, by default, every single layer.

    Args:
        model: A Llama-family causal LM in eval mode; not changed.
        batches: ``[B, T]`` token-id batches (calibration data).
        metric: ``bi``, ``angular`` or ``loss``.
        block_size: Layers per block, ``1 <= block_size < L``.
        single_layers: Also score single layers. Free for ``bi`` and
            ``angular``; for ``loss`` it adds ``L(L-1)/2`` layer forwards per
            batch, so callers that need only blocks turn it off.

    Returns:
        An ``ImportanceResult``; higher scores mean more important.
    """
    if metric not in METRICS:
        raise MinitronError(f"unknown metric '{metric}' (choose from {', '.join(METRICS)})")
    if not batches:
        raise MinitronError("no calibration data to score with")
    num_layers = len(decoder_layers(model))
    check_block_size(num_layers, block_size)
    sizes = sorted({1, block_size} if single_layers or metric != "loss" else {block_size})
    baseline = None
    if metric == "loss":
        baseline, scores, tokens = loss_scores(model, batches, sizes)
    else:
        scores, tokens = similarity_scores(model, batches, metric, sizes)
    return ImportanceResult(
        metric=metric,
        num_layers=num_layers,
        block_size=block_size,
        layers=scores.get(1, []),
        blocks=scores[block_size],
        baseline_loss=baseline,
        tokens=tokens,
    )


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device

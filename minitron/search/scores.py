"""Replace-1-block scores: the parent with one layer swapped for a variant, against the parent.

For every layer ``l`` and every variant of the library, the variant is initialised
from the parent layer the way ``minitron prune`` block edits do (mean K/V heads, the
most active FFN channels, least-squares linear maps, all fitted on the parent's own
calibration activations, gathered once for every layer) and the parent with only that
layer swapped is scored on held-out tokens: the mean per-token KL(parent ‖ swapped)
of next-token distributions (also its LM loss and top-1 agreement with the parent).

The prefix is reused: the parent is traced once per batch, and a swap at layer ``l``
runs only layers ``l .. L-1`` from the traced state entering ``l``. Variants are scored
as initialised, or with their sub-blocks trained by blockwise distillation
(``minitron.search.bld``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minitron.layers import decoder, decoder_layers, run_layers, trace
from minitron.nas.calibrate import RIDGE
from minitron.nas.collect import Calibration
from minitron.progress import progress
from minitron.search.library import Library
from minitron.search.ranks import Ranks
from minitron.search.variants import TrainedWeights, gather_statistics, swapped_layer


@dataclass
class VariantScore:
    """Held-out quality of the parent with one layer swapped (lower KL = better)."""

    kl: float
    lm_loss: float
    agreement: float


@dataclass
class Scores:
    """``kl[l][v]`` and the other measures, per layer and variant of a library."""

    kl: list[list[float]]
    lm_loss: list[list[float]]
    agreement: list[list[float]]
    parent_lm_loss: float
    tokens: int
    calibration: dict[str, Any] = field(default_factory=dict)


#: Tokens per LM-head chunk: one chunk's ``[tokens, vocab]`` fp32 logits at a time.
HEAD_CHUNK = 1024
#: The parent's log-probabilities of a batch are kept for all its variants up to this
#: size; above it (a 128k vocabulary over 16k tokens is 8 GiB) each chunk is recomputed.
PARENT_CACHE_BYTES = 2 * 1024**3


class _ParentHead:
    """The parent's next-token log-probabilities of one batch, chunk by chunk."""

    def __init__(self, model: nn.Module, normed: torch.Tensor, ids: torch.Tensor):
        self.model = model
        self.hidden = normed[:, :-1].flatten(0, 1)
        self.targets = ids[:, 1:].flatten()
        count, vocab = self.hidden.shape[0], model.lm_head.weight.shape[0]
        self.chunks = [slice(i, min(i + HEAD_CHUNK, count)) for i in range(0, count, HEAD_CHUNK)]
        self.keep = count * vocab * 4 <= PARENT_CACHE_BYTES
        self.kept: dict[int, torch.Tensor] = {}

    def log_p(self, k: int) -> torch.Tensor:
        if k in self.kept:
            return self.kept[k]
        found = F.log_softmax(self.model.lm_head(self.hidden[self.chunks[k]]).float(), dim=-1)
        if self.keep:
            self.kept[k] = found
        return found


def _measures(model: nn.Module, normed: torch.Tensor, parent: _ParentHead):
    """Summed KL(parent ‖ model), LM loss and top-1 agreement over the predicted tokens."""
    hidden = normed[:, :-1].flatten(0, 1)
    sums = torch.zeros(3, dtype=torch.float64, device=hidden.device)
    for k, part in enumerate(parent.chunks):
        logits = model.lm_head(hidden[part]).float()
        log_q = F.log_softmax(logits, dim=-1)
        log_p = parent.log_p(k)
        sums[0] += F.kl_div(log_q, log_p, log_target=True, reduction="sum")
        sums[1] += F.cross_entropy(logits, parent.targets[part], reduction="sum")
        sums[2] += (log_q.argmax(-1) == log_p.argmax(-1)).sum()
    kl, loss, agree = sums.tolist()
    return kl, loss, agree


@torch.no_grad()
def replace_one_block_scores(
    model: nn.Module,
    library: Library,
    calibration: Sequence[torch.Tensor] | None,
    heldout: Sequence[torch.Tensor],
    ridge: float = RIDGE,
    trained: TrainedWeights | None = None,
    passes: dict[str, Calibration] | None = None,
    ranks: Ranks | None = None,
) -> Scores:
    """Score every variant of every layer of a nemotron-nas ``model`` (the parent).

    The model is changed while a variant is in place and restored after each; on
    return it is the parent again. With ``trained`` (from BLD) each variant's
    sub-blocks are the trained ones; ``passes`` reuses statistics already gathered.
    With ``ranks`` each process scores its share of the held-out batches and every
    process returns the scores of all of them.
    """
    ranks = ranks or Ranks()
    passes = passes or gather_statistics(model, library, calibration, ridge)
    layers = decoder_layers(model)
    count = len(layers)
    shape = [[0.0] * len(v) for v in library.layers]
    kl, loss, agree = (copy.deepcopy(shape) for _ in range(3))
    parent_loss, tokens = 0.0, 0
    device = next(model.parameters()).device
    mine = ranks.shard(heldout)
    steps = len(mine) * sum(len(v) for v in library.layers)
    with progress("replace-1-block scores", steps) as advance:
        for ids in mine:
            ids = ids.to(device)
            traced = trace(model, ids)
            normed = decoder(model).norm(traced.hidden[count])
            head = _ParentHead(model, normed, ids)
            own = _measures(model, normed, head)  # (~0, parent loss, all agree)
            parent_loss += own[1]
            predicted = ids[:, 1:].numel()
            tokens += predicted
            for layer, variants in enumerate(library.layers):
                original = model.config.block_configs
                for v, block in enumerate(variants):
                    if block == original[layer]:  # the parent's own block
                        sums = (0.0, own[1], predicted)
                    else:
                        swapped = swapped_layer(model, layer, block, passes, trained)
                        saved = layers[layer]
                        layers[layer] = swapped
                        try:
                            hidden = run_layers(
                                model, traced.hidden[layer], traced.layer_kwargs,
                                range(layer, count),
                            )  # fmt: skip
                            sums = _measures(model, decoder(model).norm(hidden), head)
                        finally:
                            layers[layer] = saved
                    kl[layer][v] += sums[0]
                    loss[layer][v] += sums[1]
                    agree[layer][v] += sums[2]
                    advance(1)
    flat = ranks.sum([x for rows in (kl, loss, agree) for row in rows for x in row]
                     + [parent_loss, tokens], device)  # fmt: skip
    summed = iter(flat)
    kl, loss, agree = ([[next(summed) for _ in row] for row in shape] for _ in range(3))
    parent_loss, tokens = next(summed), int(next(summed))
    parent = parent_loss / tokens
    return Scores(
        kl=[[k / tokens for k in row] for row in kl],
        lm_loss=[[x / tokens for x in row] for row in loss],
        agreement=[[a / tokens for a in row] for row in agree],
        parent_lm_loss=parent,
        tokens=tokens,
        calibration={name: cal.record for name, cal in passes.items()},
    )

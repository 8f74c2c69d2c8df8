"""Task-scored depth importance: how much a downstream score drops without a block.

The Minitron paper chose Llama-3.1-Minitron-4B-Depth's layers by Winogrande
accuracy with each contiguous block removed. Any scorer that maps a model to
an accuracy (an lm-eval task, see ``minitron.eval``) plugs in here. The score
of a candidate is the task *error* ``1 - accuracy`` of the model without it,
so, as for every metric, higher = more important.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from minitron.importance.blocks import ImportanceResult, check_block_size
from minitron.layers import decoder_layers
from minitron.progress import progress
from minitron.prune.depth import layers_removed

Scorer = Callable[[nn.Module], float]  # model -> accuracy in [0, 1]


def task_importance(
    model: nn.Module, score: Scorer, name: str, block_size: int = 1, single_layers: bool = True
) -> ImportanceResult:
    """Score every contiguous block of ``block_size`` (and single layers) by a task.

    Each candidate is removed with ``layers_removed`` (exactly the model a
    prune would give), scored, and put back: the model is unchanged on return.
    Costs one scorer call for the baseline plus one per candidate.

    Args:
        model: A Llama-family causal LM.
        score: Maps a model to an accuracy in ``[0, 1]``.
        name: Task name; the metric is recorded as ``task:<name>``.
        block_size: Layers per block, ``1 <= block_size < L``.
        single_layers: Also score single layers.

    Returns:
        An ``ImportanceResult`` whose scores are task errors with each
        candidate removed, and whose ``baseline_loss`` is the full model's error.
    """
    num_layers = len(decoder_layers(model))
    check_block_size(num_layers, block_size)
    sizes = sorted({1, block_size} if single_layers else {block_size})
    scores: dict[int, list[float]] = {}
    with progress(
        f"task:{name}: candidates scored", sum(num_layers - n + 1 for n in sizes)
    ) as advance:
        baseline = 1.0 - score(model)
        for n in sizes:
            row = []
            for start in range(num_layers - n + 1):
                with layers_removed(model, range(start, start + n)):
                    row.append(1.0 - score(model))
                advance(1)
            scores[n] = row
    return ImportanceResult(
        metric=f"task:{name}",
        num_layers=num_layers,
        block_size=block_size,
        layers=scores.get(1, []),
        blocks=scores[block_size],
        baseline_loss=baseline,
    )

"""Importance: how much each part of a model matters, the first step of pruning.

- ``minitron.importance.blocks``: decoder layers and contiguous blocks, by the
  residual stream (``bi``, ``angular``) or by the LM loss without them (depth pruning).
- ``minitron.importance.task``: blocks scored by a downstream task's error.
- ``minitron.importance.width``: MLP neurons, attention heads and embedding
  channels, from activations on calibration data (width pruning).
"""

from minitron.importance.blocks import (
    METRICS,
    ImportanceResult,
    check_block_size,
    compute_importance,
    layer_forward_cost,
    loss_scores,
    similarity_scores,
)

__all__ = [
    "METRICS",
    "ImportanceResult",
    "check_block_size",
    "compute_importance",
    "layer_forward_cost",
    "loss_scores",
    "similarity_scores",
]

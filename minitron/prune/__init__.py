"""Pruning: the edits that make a smaller model from a parent.

- ``minitron.prune.depth``: drop decoder layers.
- ``minitron.prune.width``: keep the most important embedding channels, attention
  heads and MLP neurons.
- ``minitron.prune.target``: enumerate depth x width shapes under a parameter or
  memory budget.

Loading, saving and printing are ``minitron.commands.prune``'s job.
"""

from minitron.prune.depth import (
    DepthPlan,
    check_drop_indices,
    check_request,
    count_parameters,
    drop_count,
    drop_layers,
    layers_removed,
    per_layer_updates,
    plan_depth,
    scores_block_size,
)

__all__ = [
    "DepthPlan",
    "check_drop_indices",
    "check_request",
    "count_parameters",
    "drop_count",
    "drop_layers",
    "layers_removed",
    "per_layer_updates",
    "plan_depth",
    "scores_block_size",
]

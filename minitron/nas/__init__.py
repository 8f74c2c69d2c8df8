"""Block edits of nemotron-nas models (Puzzle / Nemotron-51B style), one layer at a time.

Each edit changes the model in place and updates ``model.config.block_configs``:

- ``reduce_kv_heads``: fewer K/V heads, each new head the mean of its parents;
- ``narrow_ffn`` / ``resize_ffn``: an FFN of another width keeping the channels with the
  largest mean |act(gate)*up| on calibration data;
- ``attention_to_linear`` / ``ffn_to_linear``: ``x + W · norm(x)`` with ``W`` fitted by
  least squares on calibration activations;
- ``attention_no_op`` / ``ffn_no_op``: the sub-block removed;
- ``apply_block_configs``: a whole list of per-layer block configs, calibration
  gathered in one pass or, under a memory budget, several (``collect_statistics``,
  ``CalibrationMemory``); returns what was done to each layer.
"""

from minitron.nas.apply import apply_block_configs, apply_edits, plan_edits
from minitron.nas.blocks import attention_no_op, ffn_no_op
from minitron.nas.collect import CalibrationMemory, collect_statistics, plan_calibration
from minitron.nas.ffn import ffn_channel_importance, narrow_ffn, resize_ffn
from minitron.nas.kv import mean_kv_heads, reduce_kv_heads
from minitron.nas.linear import (
    attention_to_linear,
    ffn_to_linear,
    fit_sub_block,
    set_linear_attention,
    set_linear_ffn,
)
from minitron.nas.params import count_parameters, layer_parameters, target_config

__all__ = [
    "CalibrationMemory",
    "apply_block_configs",
    "apply_edits",
    "attention_no_op",
    "attention_to_linear",
    "collect_statistics",
    "count_parameters",
    "ffn_channel_importance",
    "ffn_no_op",
    "ffn_to_linear",
    "fit_sub_block",
    "layer_parameters",
    "mean_kv_heads",
    "narrow_ffn",
    "plan_calibration",
    "plan_edits",
    "reduce_kv_heads",
    "resize_ffn",
    "set_linear_attention",
    "set_linear_ffn",
    "target_config",
]

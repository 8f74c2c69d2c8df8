"""The ``minitron importance`` command: its typed config, and load -> score -> save.

The scores themselves are computed in ``minitron.importance``; this module
only reads the model and data, calls it and writes ``scores.json`` and a plot.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

from minitron.config import DataConfig, Device, Dtype, config_to_dict
from minitron.data import batches, load_text_data
from minitron.errors import MinitronError
from minitron.importance import ImportanceResult, check_block_size, compute_importance
from minitron.io import (
    atomic_output_dir,
    check_output_dir,
    load_config,
    load_model,
    model_identity,
)
from minitron.plots import plot_importance

Metric = Literal["bi", "angular", "loss"]


@dataclasses.dataclass(frozen=True)
class ImportanceConfig:
    """``minitron importance``: score how much each layer and block matters.

    Attributes:
        model: Model spec (embedded alias, local folder, ``.gguf`` or Hub id).
        metric: ``bi``, ``angular`` or ``loss`` (see ``minitron.importance``).
        block_size: Layers per contiguous block scored besides single layers.
        data: Calibration text.
        dtype: Compute dtype; ``auto`` is bfloat16 on CUDA, float32 on CPU.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        trust_remote_code: Allow a Hub model's own code to run.
    """

    model: str = "smollm2-135m"
    metric: Metric = "loss"
    block_size: int = 1
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    dtype: Dtype = "auto"
    device: Device = "auto"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise MinitronError(f"block_size must be at least 1 (got {self.block_size})")


def run_importance(
    config: ImportanceConfig, output: str | Path, overwrite: bool = False
) -> ImportanceResult:
    """The ``minitron importance`` command: load, score, write ``scores.json`` and a plot.

    Checks the output folder before loading anything; writes into a temporary
    folder renamed on success.
    """
    output = check_output_dir(output, overwrite)
    num_layers = load_config(config.model, config.trust_remote_code).num_hidden_layers
    check_block_size(num_layers, config.block_size)  # fail before loading weights
    model, tokenizer = load_model(
        config.model, config.dtype, config.device, config.trust_remote_code
    )
    data = load_text_data(config.data, tokenizer)
    result = compute_importance(
        model, batches(data.calibration, config.data.batch_size), config.metric, config.block_size
    )
    result.data = data.info
    record = result.to_dict() | {
        "model": config.model,
        "model_identity": model_identity(config.model),
        "config": config_to_dict(config),
    }
    with atomic_output_dir(output, overwrite) as tmp:
        (tmp / "scores.json").write_text(json.dumps(record, indent=2) + "\n")
        plot_importance(result, tmp / "importance.png", f"{config.model}: {config.metric}")
    return result

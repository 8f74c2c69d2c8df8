"""The ``minitron importance`` command: its typed config, and load -> score -> save.

The scores themselves are computed in ``minitron.importance``; this module
only reads the model and data, calls it and writes ``scores.json`` and a plot.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from minitron.config import DataConfig, Device, Dtype, choice_error, config_to_dict
from minitron.data import batches, load_text_data
from minitron.errors import MinitronError
from minitron.importance import METRICS, ImportanceResult, check_block_size, compute_importance
from minitron.importance.task import task_importance
from minitron.importance.width import WidthScores, width_importance
from minitron.io import (
    atomic_output_dir,
    check_output_dir,
    load_config,
    load_model,
    model_identity,
)
from minitron.plots import plot_importance, plot_width_importance

Metric = str  # "bi", "angular", "loss" or "task:<lm-eval task>"
WIDTH = "width"  # minitron importance --metric width: channels, heads and neurons


def check_metric(metric: str, key: str = "metric") -> None:
    """Accept ``bi``, ``angular``, ``loss`` or ``task:<name>``; else a one-line error."""
    if isinstance(metric, str) and (
        metric in METRICS or (metric.startswith("task:") and metric.removeprefix("task:").strip())
    ):
        return
    choices = [*METRICS, "task:<lm-eval task>"] + ([WIDTH] if key == "metric" else [])
    raise choice_error(key, metric, choices)


@dataclasses.dataclass(frozen=True)
class TaskScoring:
    """How a ``task:<name>`` metric runs its lm-eval task on each candidate.

    Attributes:
        limit: Items of the task scored per candidate (``None``: all of them).
        include_path: A folder of extra task YAMLs (local, offline tasks).
        num_fewshot: Few-shot examples (``None``: the task's default).
    """

    limit: int | None = None
    include_path: str | None = None
    num_fewshot: int | None = None


def score_layers(
    model: Any,
    tokenizer: Any,
    metric: str,
    calibration: list[Any],
    block_size: int,
    single_layers: bool = True,
    task: TaskScoring | None = None,
) -> ImportanceResult:
    """Importance by any metric: ``compute_importance``, or a task scan for ``task:<name>``.

    Does not change the model (a task scan removes and restores each candidate).
    """
    if not metric.startswith("task:"):
        return compute_importance(model, calibration, metric, block_size, single_layers)
    from minitron.eval import evaluate_tasks

    name = metric.removeprefix("task:")
    task = task or TaskScoring()
    paths = [task.include_path] if task.include_path else []
    shots = {name: task.num_fewshot} if task.num_fewshot is not None else None

    def accuracy(candidate: Any) -> float:
        scores = evaluate_tasks(candidate, tokenizer, [name], task.limit, paths, shots)
        if name not in scores:
            raise MinitronError(f"task '{name}' gave no score of its own (is it a group?)")
        return float(scores[name]["value"])

    return task_importance(model, accuracy, name, block_size, single_layers)


@dataclasses.dataclass(frozen=True)
class ImportanceConfig:
    """``minitron importance``: score how much each layer and block matters.

    Attributes:
        model: Model spec (embedded alias, local folder, ``.gguf`` or Hub id).
        metric: ``bi``, ``angular`` or ``loss`` (see ``minitron.importance``), or
            ``task:<name>``: the error of an lm-eval task with each candidate removed;
            or ``width``: activation importance of every embedding channel, attention
            head and MLP neuron (``minitron.importance.width``), for width pruning.
        block_size: Layers per contiguous block scored besides single layers.
        data: Calibration text (not used by ``task:`` metrics).
        task: How a ``task:`` metric runs its task.
        dtype: Compute dtype; ``auto`` is bfloat16 on CUDA, float32 on CPU.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        trust_remote_code: Allow a Hub model's own code to run.
    """

    model: str = "smollm2-135m"
    metric: Metric = "loss"
    block_size: int = 1
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    task: TaskScoring = dataclasses.field(default_factory=TaskScoring)
    dtype: Dtype = "auto"
    device: Device = "auto"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.metric != WIDTH:
            check_metric(self.metric)
        if self.block_size < 1:
            raise MinitronError(f"block_size must be at least 1 (got {self.block_size})")


def run_importance(
    config: ImportanceConfig, output: str | Path, overwrite: bool = False
) -> ImportanceResult | WidthScores:
    """The ``minitron importance`` command: load, score, write ``scores.json`` and a plot.

    ``--metric width`` returns ``WidthScores`` and writes a PNG per kind of unit.

    Checks the output folder before loading anything; writes into a temporary
    folder renamed on success.
    """
    output = check_output_dir(output, overwrite)
    num_layers = load_config(config.model, config.trust_remote_code).num_hidden_layers
    if config.metric == WIDTH:
        return _run_width(config, output, overwrite)
    check_block_size(num_layers, config.block_size)  # fail before loading weights
    model, tokenizer = load_model(
        config.model, config.dtype, config.device, config.trust_remote_code
    )
    task_metric = config.metric.startswith("task:")
    data = None if task_metric else load_text_data(config.data, tokenizer)
    calibration = [] if data is None else batches(data.calibration, config.data.batch_size)
    result = score_layers(
        model, tokenizer, config.metric, calibration, config.block_size, task=config.task
    )
    result.data = data.info if data else {"task": config.metric.removeprefix("task:")}
    record = result.to_dict() | {
        "model": config.model,
        "model_identity": model_identity(config.model),
        "config": config_to_dict(config),
    }
    with atomic_output_dir(output, overwrite) as tmp:
        (tmp / "scores.json").write_text(json.dumps(record, indent=2) + "\n")
        plot_importance(result, tmp / "importance.png", f"{config.model}: {config.metric}")
    return result


def _run_width(config: ImportanceConfig, output: Path, overwrite: bool) -> WidthScores:
    """``--metric width``: activation importance; ``scores.json`` and a PNG per kind."""
    model, tokenizer = load_model(
        config.model, config.dtype, config.device, config.trust_remote_code
    )
    data = load_text_data(config.data, tokenizer)
    scores = width_importance(model, batches(data.calibration, config.data.batch_size))
    scores.data = data.info
    record = scores.to_dict() | {
        "model": config.model,
        "model_identity": model_identity(config.model),
        "config": config_to_dict(config),
    }
    with atomic_output_dir(output, overwrite) as tmp:
        (tmp / "scores.json").write_text(json.dumps(record) + "\n")
        plot_width_importance(scores, tmp, f"{config.model}: width importance")
    return scores

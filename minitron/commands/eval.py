"""The ``minitron eval`` command: its typed config, and load -> evaluate -> save.

The evaluation itself lives in ``minitron.eval`` (lm-eval glue, presets,
sandboxed code scoring, sliding-window perplexity); this module loads each
model in turn, calls it and writes ``results.json`` (see docs/eval.md) with
lm-eval's per-sample records as jsonl beside it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path
from typing import Any

from rich.markup import escape

from minitron import __version__
from minitron.config import DataConfig, Device, Dtype, config_to_dict
from minitron.data import iter_documents
from minitron.errors import MinitronError
from minitron.eval import isolation
from minitron.eval.harness import TaskSet
from minitron.eval.perplexity import sliding_perplexity
from minitron.eval.presets import Preset, get_preset
from minitron.io import atomic_output_dir, check_output_dir, load_model, resolve_model
from minitron.progress import console, status
from minitron.prune import count_parameters

PERPLEXITY_TASK = "perplexity"
CODE_WARNING = (
    "warning: --allow-code-execution runs programs the model wrote on this machine, each in "
    "its own user, mount, PID and network namespaces with a read-only filesystem; a kernel "
    "bug could still let one out (see docs/eval.md)"
)
UNSAFE_WARNING = (
    "warning: --unsafe-code-execution-without-sandbox: this system cannot make the OS sandbox "
    "({problem}), so programs the model wrote run as you, limited only by rlimits and an "
    "audit hook that native code gets around (see docs/eval.md)"
)


@dataclasses.dataclass(frozen=True)
class PerplexityConfig:
    """Perplexity as its own task: any data spec, a sliding window over long text.

    Attributes:
        source: ``stdlib``, a local .txt/.jsonl/.parquet file or folder, or a Hub dataset.
        subset: Hub dataset configuration.
        split: Hub dataset split.
        text_column: Column or JSON key with the text.
        tokens: Tokens of text to score (documents joined by EOS, cut here).
        window: Tokens per forward pass.
        stride: Tokens between window starts (``window`` = no overlap).
    """

    source: str = "stdlib"
    subset: str | None = None
    split: str = "train"
    text_column: str = "text"
    tokens: int = 4096
    window: int = 512
    stride: int = 256

    def __post_init__(self) -> None:
        if self.tokens < 2:
            raise MinitronError(f"perplexity.tokens must be at least 2 (got {self.tokens})")
        if self.window < 2 or not 1 <= self.stride <= self.window:
            raise MinitronError(
                f"perplexity needs window >= 2 and 1 <= stride <= window "
                f"(got window {self.window}, stride {self.stride})"
            )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``minitron eval``: score models on lm-eval tasks, a preset, and perplexity.

    Attributes:
        models: Model specs, evaluated one after another on the same tasks.
        tasks: lm-eval task or group names; ``perplexity`` adds the perplexity task.
        preset: ``minitron-4b`` or ``nemotron-51b``: a card's tasks, shots and numbers.
        limit: Documents per task (for quick checks; scores are then not the card's).
        include_path: Extra folders of task YAMLs.
        allow_code_execution: Let code tasks run generated programs (sandboxed).
        unsafe_code_execution_without_sandbox: Where the OS sandbox cannot be made, run
            them anyway, with only rlimits and an audit hook (needs
            ``allow_code_execution``).
        batch_size: lm-eval batch size.
        perplexity: Perplexity settings (used when ``perplexity`` is among the tasks).
        dtype: Compute dtype; ``auto`` is bfloat16 on CUDA, float32 on CPU.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        trust_remote_code: Allow a Hub model's own code to run.
    """

    models: list[str] = dataclasses.field(default_factory=lambda: ["smollm2-135m"])
    tasks: list[str] = dataclasses.field(default_factory=list)
    preset: str | None = None
    limit: int | None = None
    include_path: list[str] = dataclasses.field(default_factory=list)
    allow_code_execution: bool = False
    unsafe_code_execution_without_sandbox: bool = False
    batch_size: int = 1
    perplexity: PerplexityConfig = dataclasses.field(default_factory=PerplexityConfig)
    dtype: Dtype = "auto"
    device: Device = "auto"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not self.models:
            raise MinitronError("no model given")
        if self.limit is not None and self.limit < 1:
            raise MinitronError(f"limit must be at least 1 (got {self.limit})")
        if self.unsafe_code_execution_without_sandbox and not self.allow_code_execution:
            raise MinitronError(
                "--unsafe-code-execution-without-sandbox needs --allow-code-execution"
            )
        if self.batch_size < 1:
            raise MinitronError(f"batch_size must be at least 1 (got {self.batch_size})")
        if not self.tasks and self.preset is None:
            raise MinitronError("no tasks given (use --tasks or --preset)")
        if self.preset is not None:
            get_preset(self.preset)

    @property
    def lm_eval_tasks(self) -> list[str]:
        """Preset tasks first, then ``tasks`` (without ``perplexity``), each once."""
        names = get_preset(self.preset).task_names if self.preset else []
        return list(dict.fromkeys(names + [t for t in self.tasks if t != PERPLEXITY_TASK]))

    @property
    def wants_perplexity(self) -> bool:
        return PERPLEXITY_TASK in self.tasks


def code_warning(unsafe: bool) -> str:
    """The warning ``--allow-code-execution`` prints: how programs will be run here."""
    problem = isolation.sandbox_problem() if unsafe else None
    if problem is None:
        return f"[bold yellow]{CODE_WARNING}[/]"
    return f"[bold red]{escape(UNSAFE_WARNING.format(problem=problem))}[/]"


def build_task_set(config: EvalConfig) -> TaskSet | None:
    """The lm-eval tasks of ``config``, loaded once (None when only perplexity is asked)."""
    names = config.lm_eval_tasks
    if not names:
        return None
    preset = get_preset(config.preset) if config.preset else None
    shots = {t.task: t.num_fewshot for t in preset.tasks} if preset else {}
    metrics = {t.task: t.metric for t in preset.tasks} if preset else {}
    return TaskSet(
        names, config.include_path, shots, metrics, config.allow_code_execution,
        config.unsafe_code_execution_without_sandbox,
    )  # fmt: skip


def run_eval(config: EvalConfig, output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """The ``minitron eval`` command: evaluate each model, write results.json and samples.

    Checks the output folder, the model specs and the tasks before loading any
    weights; writes into a temporary folder renamed on success.

    Returns:
        The ``results.json`` record.
    """
    output = check_output_dir(output, overwrite)
    for spec in config.models:
        resolve_model(spec)
    task_set = build_task_set(config)  # refuses code tasks that cannot be run here
    if config.allow_code_execution:
        console.print(code_warning(config.unsafe_code_execution_without_sandbox), soft_wrap=True)
    preset = get_preset(config.preset) if config.preset else None
    rows, samples = [], []
    for spec in config.models:
        row, logs = evaluate_model(config, spec, task_set, preset)
        rows.append(row)
        samples.append(logs)
    record = {
        "kind": "eval", "preset": config.preset,
        "published": preset.record() if preset else None, "limit": config.limit,
        "models": rows, "config": config_to_dict(config), "minitron_version": __version__,
    }  # fmt: skip
    with atomic_output_dir(output, overwrite) as tmp:
        (tmp / "results.json").write_text(json.dumps(record, indent=2) + "\n")
        for index, (spec, logs) in enumerate(zip(config.models, samples, strict=True)):
            write_samples(tmp / "samples" / f"{index}-{_slug(spec)}", logs)
    return record


def evaluate_model(
    config: EvalConfig, spec: str, task_set: TaskSet | None, preset: Preset | None
) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """Load one model, score it, free it: its ``results.json`` row and its sample logs."""
    model, tokenizer = load_model(spec, config.dtype, config.device, config.trust_remote_code)
    row: dict[str, Any] = {"model": spec, "params": count_parameters(model), "tasks": {}}
    logs: dict[str, list[dict]] = {}
    if task_set is not None:
        with status(f"Evaluating {spec}"):
            result = task_set.evaluate(model, tokenizer, config.limit, config.batch_size)
        for name, score in result.scores.items():
            published = preset.row(name) if preset else None
            row["tasks"][name] = score.to_dict() | {
                "published": published.published if published else None,
                "published_parent": published.parent if published else None,
            }
        logs = result.samples
    row["perplexity"] = model_perplexity(model, tokenizer, config.perplexity) if (
        config.wants_perplexity
    ) else None  # fmt: skip
    del model
    gc.collect()
    return row, logs


def model_perplexity(model: Any, tokenizer: Any, config: PerplexityConfig) -> dict[str, Any]:
    """The perplexity entry of ``results.json`` for one model (not changed)."""
    ids = text_tokens(tokenizer, config)
    result = sliding_perplexity(model, ids, config.window, config.stride)
    return {
        "data": config.source, "value": result.value, "tokens": result.tokens,
        "window": result.window, "stride": result.stride,
    }  # fmt: skip


def text_tokens(tokenizer: Any, config: PerplexityConfig) -> Any:
    """Up to ``config.tokens`` token ids ``[N]`` of ``config.source``, documents joined by EOS."""
    import torch

    data = DataConfig(
        source=config.source, subset=config.subset, split=config.split,
        text_column=config.text_column,
    )  # fmt: skip
    stream: list[int] = []
    for text in iter_documents(data):
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
        if len(stream) >= config.tokens:
            break
    if len(stream) < 2:
        raise MinitronError(f"perplexity data '{config.source}' has no text")
    return torch.tensor(stream[: config.tokens], dtype=torch.long)


def write_samples(folder: Path, logs: dict[str, list[dict]]) -> None:
    """lm-eval's per-sample records, one jsonl file per task."""
    from lm_eval.utils import handle_non_serializable

    if not logs:
        return
    folder.mkdir(parents=True)
    for task, records in logs.items():
        with (folder / f"{task}.jsonl").open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, default=handle_non_serializable) + "\n")


def _slug(spec: str) -> str:
    name = Path(spec.rstrip("/")).name.removesuffix(".gguf") or "model"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

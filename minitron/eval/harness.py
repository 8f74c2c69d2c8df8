"""lm-eval glue: load tasks once, evaluate models already in memory, pick each task's metric.

``TaskSet`` builds lm-eval's ``TaskManager`` over minitron's own suite plus any
``--include-path`` folders, loads the tasks and applies shot counts once; its
``evaluate`` then scores any number of models (lm-eval's ``HFLM`` wraps the
model object, so nemotron-nas models need no remote code). ``evaluate_tasks``
is the one-call form, with task sets cached by their arguments.

Two fixes over stock lm-eval, applied without changing it:
- relative ``data_files`` (and ``data_dir``, local ``dataset_path``) in a task
  YAML from an include folder resolve against that YAML's own folder, not the
  working directory (the index entries get configs with absolute paths);
- code tasks (``unsafe_code: true``) are scored by minitron's sandbox: while
  tasks load, ``evaluate.load("code_eval")`` returns ``minitron.eval.code.CodeEval``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from minitron.errors import MinitronError, first_line
from minitron.eval import isolation
from minitron.eval.code import CodeEval, allow_code_execution

SUITE_DIR = Path(__file__).with_name("tasks")
FEWSHOT_SEED = 1234  # lm-eval's default few-shot seed


@dataclass(frozen=True)
class TaskScore:
    """One reported number: ``value`` of ``metric`` (lm-eval's scale, accuracies in [0, 1])."""

    metric: str
    value: float
    stderr: float | None
    num_fewshot: int
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "value": self.value, "stderr": self.stderr,
            "num_fewshot": self.num_fewshot, "samples": self.samples,
        }  # fmt: skip


@dataclass
class TaskOutput:
    """Scores by reported task name, and lm-eval's per-sample records by leaf task."""

    scores: dict[str, TaskScore]
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class _Requested:
    name: str
    leaves: list[str]
    metric: str | None  # "acc_norm" or "exact_match,strict-match"; None: each task's first
    first_metrics: dict[str, str | None] = field(default_factory=dict)  # by leaf task


class TaskSet:
    """lm-eval tasks loaded once and evaluated on any number of models.

    Args:
        tasks: lm-eval task or group names (e.g. ``minitron-suite``, ``hellaswag``).
        include_paths: Extra folders of task YAMLs (minitron's suite is always included).
        num_fewshot: Shots per requested name; others keep their YAML's value (or 0).
        metrics: Metric per requested name (``acc_norm``, ``exact_match,strict-match``).
        allow_code: Allow code tasks to run generated programs (sandboxed).
        unsafe_code: Run them without the OS sandbox where it cannot be made.

    Raises:
        MinitronError: On an unknown task, a missing include folder, a task that
            fails to load, a code task without ``allow_code``, or a code task where
            no OS sandbox can be made and ``unsafe_code`` is off.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        include_paths: Sequence[str | Path] = (),
        num_fewshot: Mapping[str, int] | None = None,
        metrics: Mapping[str, str] | None = None,
        allow_code: bool = False,
        unsafe_code: bool = False,
    ) -> None:
        if not tasks:
            raise MinitronError("no tasks given (use --tasks or --preset)")
        self.allow_code = allow_code
        self.unsafe_code = unsafe_code
        manager = task_manager(_include_folders(include_paths), tuple(tasks))
        self.requested: list[_Requested] = []
        self.task_dict: dict[str, dict] = {"tasks": {}, "groups": {}, "group_map": {}}
        with _code_metric_stand_in(), _allowed(allow_code, unsafe_code):
            for name in tasks:
                loaded = _load(manager, name)
                for key in self.task_dict:
                    self.task_dict[key].update(loaded[key])
                firsts = {leaf: _first_metric(task) for leaf, task in loaded["tasks"].items()}
                metric = (metrics or {}).get(name)
                self.requested.append(_Requested(name, list(firsts), metric, firsts))
        self.code_tasks = sorted(
            n for n, t in self.task_dict["tasks"].items() if getattr(t, "UNSAFE_CODE", False)
        )
        if self.code_tasks and not allow_code:
            raise MinitronError(
                f"task {self.code_tasks[0]} runs generated code: "
                "pass --allow-code-execution to allow it (sandboxed, see docs/eval.md)"
            )
        if self.code_tasks and not unsafe_code:
            isolation.require_sandbox()  # refuse now, before any model is loaded
        for item in self.requested:
            shots = (num_fewshot or {}).get(item.name)
            for leaf in item.leaves:
                task = self.task_dict["tasks"][leaf]
                if shots is not None:
                    task.set_config(key="num_fewshot", value=shots)
                elif task.get_config("num_fewshot") is None:
                    task.set_config(key="num_fewshot", value=0)
                task.set_fewshot_seed(seed=FEWSHOT_SEED)

    def evaluate(
        self,
        model: Any,
        tokenizer: Any,
        limit: int | None = None,
        batch_size: int = 1,
        log_samples: bool = True,
    ) -> TaskOutput:
        """Score ``model`` (not changed) on every task; ``limit`` docs per leaf task."""
        import numpy as np
        import torch
        from lm_eval.evaluator import evaluate
        from lm_eval.models.huggingface import HFLM

        random.seed(0)
        np.random.seed(FEWSHOT_SEED)
        torch.manual_seed(FEWSHOT_SEED)
        with _quiet_lm_eval(), _allowed(self.allow_code, self.unsafe_code):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            results = evaluate(
                lm=lm, task_dict=self.task_dict, limit=limit, bootstrap_iters=100,
                log_samples=log_samples, confirm_run_unsafe_code=self.allow_code,
            )  # fmt: skip
        scores: dict[str, TaskScore] = {}
        for item in self.requested:
            scores.update(_pick_scores(results, item))
        return TaskOutput(scores, results.get("samples", {}) if log_samples else {})


def evaluate_tasks(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: int | None = None,
    include_paths: Sequence[str | Path] = (),
    num_fewshot: Mapping[str, int] | None = None,
    batch_size: int = 1,
) -> dict[str, dict[str, Any]]:
    """Score a model already in memory on lm-eval tasks; cheap to call repeatedly.

    Does not change the model. Task sets are built once per distinct argument
    set and reused (so scoring many pruned variants re-reads no task data).
    Code tasks are refused here; use ``TaskSet(..., allow_code=True)``.

    Returns:
        ``{task name: {"metric", "value", "stderr", "num_fewshot", "samples"}}``.
    """
    shots = tuple(sorted((num_fewshot or {}).items()))
    task_set = _cached_task_set(tuple(tasks), tuple(map(str, include_paths)), shots)
    output = task_set.evaluate(model, tokenizer, limit, batch_size, log_samples=False)
    return {name: score.to_dict() for name, score in output.scores.items()}


@functools.lru_cache(maxsize=8)
def _cached_task_set(
    tasks: tuple[str, ...], include_paths: tuple[str, ...], shots: tuple[tuple[str, int], ...]
) -> TaskSet:
    return TaskSet(tasks, include_paths, dict(shots))


def _include_folders(paths: Sequence[str | Path]) -> tuple[Path, ...]:
    folders = [SUITE_DIR]
    for path in paths:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise MinitronError(f"include path not found: {path}")
        folders.append(folder.resolve())
    return tuple(folders)


def task_manager(folders: tuple[Path, ...], wanted: tuple[str, ...] = ()) -> Any:
    """lm-eval's ``TaskManager`` over ``folders``, with lm-eval's own tasks only if needed.

    Indexing lm-eval's ~15k built-in tasks takes seconds, so it is skipped when
    every ``wanted`` name is in ``folders``.
    """
    local = _manager(folders, False)
    if all(name in local.all_tasks for name in wanted):
        return local
    return _manager(folders, True)


@functools.lru_cache(maxsize=4)
def _manager(folders: tuple[Path, ...], defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    with _quiet_lm_eval():
        manager = TaskManager(include_path=list(map(str, folders)), include_defaults=defaults)
    _anchor_data_paths(manager, folders)
    return manager


def _anchor_data_paths(manager: Any, folders: tuple[Path, ...]) -> None:
    """Make relative data paths of tasks from ``folders`` absolute, against their YAML's folder.

    Changes ``manager``'s index in place: each such entry gets its full config
    with absolute paths and no YAML path, so lm-eval builds the task from it.
    """
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    for entry in manager.task_index.values():
        path = entry.yaml_path
        if entry.kind is not Kind.TASK or path is None:
            continue
        if not any(Path(path).resolve().is_relative_to(f) for f in folders):
            continue
        with contextlib.suppress(Exception), _code_metric_stand_in():
            config = load_yaml(path, resolve_func=True)
            entry.cfg = anchor_config(config, Path(path).resolve().parent)
            entry.yaml_path = None


def anchor_config(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A copy of a task config whose relative data paths are made absolute against ``folder``."""
    config = copy.copy(config)
    kwargs = config.get("dataset_kwargs")
    if isinstance(kwargs, dict):
        kwargs = dict(kwargs)
        for key in ("data_files", "data_dir"):
            if key in kwargs:
                kwargs[key] = _absolute(kwargs[key], folder)
        config["dataset_kwargs"] = kwargs
    dataset_path = config.get("dataset_path")
    local = isinstance(dataset_path, str) and not Path(dataset_path).is_absolute()
    if local and (folder / dataset_path).exists():
        config["dataset_path"] = str(folder / dataset_path)
    return config


def _absolute(value: Any, folder: Path) -> Any:
    if isinstance(value, str):
        if "://" in value or Path(value).expanduser().is_absolute():
            return value
        return str(folder / value)
    if isinstance(value, list):
        return [_absolute(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, folder) for k, v in value.items()}
    return value


def _load(manager: Any, name: str) -> dict[str, Any]:
    if name not in manager.all_tasks:
        close = difflib.get_close_matches(name, manager.all_tasks, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise MinitronError(f"unknown task '{name}'{hint}")
    try:
        with _quiet_lm_eval():
            return manager.load([name])
    except MinitronError as err:  # e.g. a code task's scorer, called while it loads
        raise MinitronError(f"task {name}: {err}") from None
    except Exception as err:  # datasets and lm-eval raise many types
        raise MinitronError(f"could not load task '{name}': {first_line(err)}") from None


def _pick_scores(results: dict[str, Any], item: _Requested) -> dict[str, TaskScore]:
    """The reported number of ``item``: its own row, else one row per leaf task."""
    table = results["results"]
    if item.name in table and _metric_key(table[item.name], item.metric):
        names = [item.name]
    else:
        names = item.leaves
    scores = {}
    for name in names:
        row = table[name]
        key = _metric_key(row, item.metric or item.first_metrics.get(name))
        if key is None:
            raise MinitronError(f"task '{name}' reported no metric {item.metric or ''}".strip())
        metric, _, filt = key.partition(",")
        stderr = row.get(f"{metric}_stderr,{filt}")
        leaves = [name] if name in results["n-samples"] else item.leaves
        scores[name] = TaskScore(
            metric=key if filt != "none" else metric,
            value=float(row[key]),
            stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
            num_fewshot=int(results["n-shot"].get(leaves[0], 0)),
            samples=sum(results["n-samples"][leaf]["effective"] for leaf in leaves),
        )
    return scores


def _metric_key(row: Mapping[str, Any], metric: str | None) -> str | None:
    """``"acc,none"``-style key of ``metric`` in a result row (any filter when none is named)."""
    keys = [k for k in row if "," in k and "_stderr," not in k]
    if metric is None:
        return keys[0] if keys else None
    if "," in metric:
        return metric if metric in row else None
    return next((k for k in keys if k.startswith(f"{metric},")), None)


def _first_metric(task: Any) -> str | None:
    """The first metric in a task's ``metric_list`` (what its YAML lists first)."""
    metrics = getattr(task.config, "metric_list", None) or []
    if not metrics:
        return None
    metric = metrics[0].get("metric")
    return metric if isinstance(metric, str) else getattr(metric, "__name__", None)


@contextlib.contextmanager
def _code_metric_stand_in() -> Iterator[None]:
    """While tasks load, ``evaluate.load("code_eval")`` gives minitron's sandboxed scorer."""
    try:
        import evaluate
    except ImportError:
        yield
        return
    original = evaluate.load

    def load(name: str, *args: Any, **kwargs: Any) -> Any:
        return CodeEval() if name == "code_eval" else original(name, *args, **kwargs)

    with mock.patch.object(evaluate, "load", load):
        yield


def _allowed(allow: bool, unsafe: bool = False) -> contextlib.AbstractContextManager:
    return allow_code_execution(unsafe) if allow else contextlib.nullcontext()


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs at INFO/WARNING level for every task; keep stderr to errors.

    Also turns off the ``datasets`` progress bars (for the rest of the process).
    """
    import datasets

    datasets.disable_progress_bars()
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)

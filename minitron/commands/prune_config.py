"""The typed config of ``minitron prune``: depth pruning or block edits (nemotron-nas)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from minitron.commands.importance import Metric, TaskScoring, check_metric
from minitron.config import DataConfig, Device, Dtype
from minitron.errors import MinitronError


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """``minitron prune``: drop decoder layers (depth), or edit each block (nemotron-nas).

    Depth: give either ``drop_layers`` (explicit 0-indexed layers) or
    ``target_layers`` with a ``method``: ``contiguous`` drops the least important
    block of ``L - target_layers`` layers (the Minitron paper's choice),
    ``individual`` the ``L - target_layers`` least important single layers (ShortGPT's).

    Blocks: give ``block_configs`` (one published-shape entry per layer) or ``rules``
    (see ``minitron.nas.rules``); the output is a nemotron-nas checkpoint. Depth keys
    and block keys cannot be mixed in one recipe.

    Attributes:
        parent: Model spec of the model to prune.
        target_layers: Layers to keep.
        drop_layers: 0-indexed layers to drop; excludes ``method``.
        method: ``contiguous`` (default when ``drop_layers`` is absent) or ``individual``.
        metric: Importance metric for ``method``: ``bi``, ``angular``, ``loss`` or
            ``task:<lm-eval task>`` (the paper scored blocks by Winogrande).
        task: How a ``task:`` metric runs its task (limit, include_path, num_fewshot).
        scores: A ``scores.json`` from ``minitron importance`` to reuse instead of scoring.
        data: Calibration text for scoring, held-out text for perplexity.
        perplexity: Report held-out perplexity of the parent and the pruned model.
        output: Output folder; default ``runs/<recipe folder>/<recipe name>``.
        dtype: Compute dtype; weights are saved in the parent's own dtype.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        trust_remote_code: Allow a Hub model's own code to run.
        block_configs: The target block of every layer (published JSON shape).
        rules: Per-layer edits, applied in order (``minitron.nas.rules``).
        serve_with: Refuse block kinds this engine cannot serve.
        ridge: Ridge strength of the least-squares fits of linear sub-blocks.
        accumulate_on: Where the calibration accumulators of block edits live: ``cpu``
            (the model's device holds one batch's products at a time) or ``device``.
        calibration_budget_gib: Most GiB the accumulators of one calibration pass may
            hold; more statistics take more passes. ``None``: one pass.
    """

    parent: str
    target_layers: int | None = None
    drop_layers: list[int] | None = None
    method: Literal["contiguous", "individual"] | None = None
    metric: Metric = "loss"
    task: TaskScoring = dataclasses.field(default_factory=TaskScoring)
    scores: str | None = None
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    perplexity: bool = True
    output: str | None = None
    dtype: Dtype = "auto"
    device: Device = "auto"
    trust_remote_code: bool = False
    block_configs: list[dict] | None = None
    rules: list[dict] | None = None
    serve_with: Literal["vllm", "trtllm", "llamacpp"] | None = None
    ridge: float = 1e-2
    accumulate_on: Literal["cpu", "device"] = "cpu"
    calibration_budget_gib: float | None = None

    def __post_init__(self) -> None:
        check_metric(self.metric)
        if self.ridge < 0:
            raise MinitronError(f"ridge must be 0 or more (got {self.ridge})")
        budget = self.calibration_budget_gib
        if budget is not None and not budget > 0:
            raise MinitronError(f"calibration_budget_gib must be above 0 (got {budget})")
        if self.block_configs is not None and self.rules is not None:
            raise MinitronError("give either block_configs or rules, not both")
        if self.edits_blocks:
            self._check_no_depth_keys()
            return
        if self.serve_with is not None:
            raise MinitronError("serve_with applies to block edits: give block_configs or rules")
        if self.drop_layers is not None and self.method is not None:
            raise MinitronError("give either drop_layers or method, not both")
        if self.drop_layers is None and self.target_layers is None:
            raise MinitronError("give target_layers (with a method) or drop_layers")
        if self.target_layers is not None and self.target_layers < 1:
            raise MinitronError(f"target_layers must be at least 1 (got {self.target_layers})")
        if self.drop_layers is not None and self.scores is not None:
            raise MinitronError("scores are only used with a method, not with drop_layers")
        if self.drop_layers is not None and len(set(self.drop_layers)) != len(self.drop_layers):
            raise MinitronError(f"drop_layers lists a layer twice: {self.drop_layers}")

    @property
    def edits_blocks(self) -> bool:
        """True for a block-edit (nemotron-nas) recipe, False for depth pruning."""
        return self.block_configs is not None or self.rules is not None

    def _check_no_depth_keys(self) -> None:
        blocks = "block_configs" if self.block_configs is not None else "rules"
        for key in ("drop_layers", "target_layers", "method", "scores"):
            if getattr(self, key) is not None:
                raise MinitronError(
                    f"{key} is a depth-pruning key and {blocks} edits blocks: "
                    "a recipe does one or the other"
                )

    @property
    def calibration_memory(self):
        """The ``CalibrationMemory`` (placement and budget) of the block edits' calibration."""
        from minitron.nas.collect import GIB, CalibrationMemory  # torch: only when needed

        budget = self.calibration_budget_gib
        return CalibrationMemory(self.accumulate_on, None if budget is None else int(budget * GIB))

    @property
    def selection(self) -> str:
        """``explicit``, ``contiguous`` or ``individual``."""
        if self.drop_layers is not None:
            return "explicit"
        return self.method or "contiguous"

"""The typed config of ``minitron prune``: depth pruning or block edits (nemotron-nas)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from minitron.commands.importance import Metric, TaskScoring, check_metric
from minitron.config import DataConfig, Device, Dtype
from minitron.errors import MinitronError


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """``target:`` of a prune recipe: search the depth x width shape that fits a budget.

    Attributes:
        params: Most parameters of the pruned model (``4.5e9``).
        memory_gib: Or: most GiB of its bf16 weights (2 bytes per parameter).
        top_k: Candidates closest to the budget that are pruned and scored by
            held-out KL divergence from the parent; the lowest is kept.
        layer_step: Layer counts considered: ``L, L - step, ...``.
        hidden_step: Hidden sizes: multiples of this that the candidate's heads divide.
        ffn_step: MLP widths: multiples of this.
        min_fraction: No dimension goes below this fraction of the parent's.
    """

    params: float | None = None
    memory_gib: float | None = None
    top_k: int = 4
    layer_step: int = 2
    hidden_step: int = 256
    ffn_step: int = 512
    min_fraction: float = 0.5

    def __post_init__(self) -> None:
        if (self.params is None) == (self.memory_gib is None):
            raise MinitronError("target: give exactly one of params or memory_gib")
        for key in ("params", "memory_gib"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise MinitronError(f"target.{key} must be above 0 (got {value})")
        for key in ("top_k", "layer_step", "hidden_step", "ffn_step"):
            if getattr(self, key) < 1:
                raise MinitronError(f"target.{key} must be at least 1 (got {getattr(self, key)})")
        if not 0 < self.min_fraction <= 1:
            raise MinitronError(f"target.min_fraction must be in (0, 1] (got {self.min_fraction})")

    @property
    def grid(self):
        """The ``TargetGrid`` of shapes this target searches."""
        from minitron.prune.target import TargetGrid  # torch: only when needed

        return TargetGrid(self.layer_step, self.hidden_step, self.ffn_step, self.min_fraction)


WIDTH_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """``minitron prune``: drop decoder layers (depth), or edit each block (nemotron-nas).

    Depth: give either ``drop_layers`` (explicit 0-indexed layers) or
    ``target_layers`` with a ``method``: ``contiguous`` drops the least important
    block of ``L - target_layers`` layers (the Minitron paper's choice),
    ``individual`` the ``L - target_layers`` least important single layers (ShortGPT's).

    Width: give any of ``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
    ``num_key_value_heads``; the most important channels, heads and neurons by
    activations are kept (``minitron.prune.width``). With depth keys too, layers are
    dropped first, then widths cut, each by its own importance.

    Target: give ``target`` (``params`` or ``memory_gib``): candidate depth x width
    shapes within the budget are pruned, scored by held-out KL from the parent and
    the best is kept (``minitron.prune.target``).

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
        hidden_size: Width prune: embedding channels to keep.
        intermediate_size: Width prune: MLP neurons to keep in every layer.
        num_attention_heads: Width prune: query heads to keep in every layer.
        num_key_value_heads: Width prune: K/V heads (groups) to keep; default: the
            parent's when the query heads divide over them, else the parent's group size.
        target: Search the shape within a parameter or memory budget.
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
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    target: TargetConfig | None = None

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
        if self.target is not None:
            self._check_target()
            return
        if self.edits_width and self.drop_layers is None and self.target_layers is None:
            if self.method is not None or self.scores is not None:
                raise MinitronError("method and scores choose layers to drop: give target_layers")
            return
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
    def edits_width(self) -> bool:
        """True when the recipe cuts widths (hidden size, MLP, heads)."""
        return any(getattr(self, key) is not None for key in WIDTH_KEYS)

    @property
    def depth_requested(self) -> bool:
        """True when the recipe drops layers (by index or by a layer count)."""
        return self.drop_layers is not None or self.target_layers is not None

    def _check_target(self) -> None:
        for key in ("drop_layers", "target_layers", "scores", *WIDTH_KEYS):
            if getattr(self, key) is not None:
                raise MinitronError(
                    f"{key} and target both choose the shape: a recipe gives one or the other"
                )
        if self.metric.startswith("task:"):
            raise MinitronError(
                "target scores the layers of every candidate depth by bi, angular or loss, "
                f"not {self.metric}"
            )

    @property
    def edits_blocks(self) -> bool:
        """True for a block-edit (nemotron-nas) recipe, False for depth pruning."""
        return self.block_configs is not None or self.rules is not None

    def _check_no_depth_keys(self) -> None:
        blocks = "block_configs" if self.block_configs is not None else "rules"
        for key in ("drop_layers", "target_layers", "method", "scores", "target", *WIDTH_KEYS):
            if getattr(self, key) is not None:
                kind = "width" if key in WIDTH_KEYS or key == "target" else "depth"
                raise MinitronError(
                    f"{key} is a {kind}-pruning key and {blocks} edits blocks: "
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

"""Calibration statistics of block edits, gathered in passes that fit a memory budget.

Narrower FFNs need each channel's mean activity (``I`` float64 sums); linear sub-blocks
need the normal equations of a least-squares fit (``XᵀX`` and ``XᵀY``, ``2 · H² · 8``
bytes each: 1 GiB at H = 8192, 18 GiB for the 18 linear-attention layers of
Nemotron-51B). ``plan_calibration`` packs these accumulators, in layer order, into
groups whose bytes fit ``CalibrationMemory.budget_bytes``; ``collect_statistics`` runs
one pass over the calibration batches per group, on the unedited model, and keeps only
each group's results (solved weights, channel means) before the next one starts.
Every statistic sees the parent's own activations however the passes are grouped.

Where the accumulators live is ``CalibrationMemory.accumulate_on``: ``"cpu"`` (the
default) keeps the sums in CPU memory, so the model's device only holds one batch's
products of one sub-block at a time; ``"device"`` keeps them beside the layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from minitron.errors import MinitronError
from minitron.nas.calibrate import ChannelStats, LinearFit, hooks, input_hook, io_hook, run_batches
from minitron.progress import progress

GIB = 2**30


@dataclass(frozen=True)
class CalibrationMemory:
    """Where the calibration accumulators live and how much one pass may hold.

    Attributes:
        accumulate_on: ``cpu`` or ``device`` (the layer's own device).
        budget_bytes: Most accumulator bytes held at once; the statistics are split into
            as many passes over the calibration data as needed. ``None``: one pass.
    """

    accumulate_on: Literal["cpu", "device"] = "cpu"
    budget_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.accumulate_on not in ("cpu", "device"):
            raise MinitronError(f"accumulate_on must be cpu or device, got {self.accumulate_on!r}")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise MinitronError(f"the calibration budget must be above 0 (got {self.budget_bytes})")


@dataclass(frozen=True)
class Statistic:
    """One accumulator an edit needs: ``kind`` is ``linear`` or ``channels``."""

    layer: int
    part: str  # "attention" or "ffn"
    kind: str
    nbytes: int


@dataclass(frozen=True)
class CalibrationPlan:
    """The statistics to gather, grouped into passes (each group: one pass)."""

    memory: CalibrationMemory
    groups: tuple[tuple[Statistic, ...], ...]

    @property
    def peak_bytes(self) -> int:
        """The largest accumulator bytes of one pass (0 when nothing is gathered)."""
        return max((sum(s.nbytes for s in group) for group in self.groups), default=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: where the accumulators live, the budget, the passes and their bytes."""
        return {
            "accumulate_on": self.memory.accumulate_on,
            "budget_bytes": self.memory.budget_bytes,
            "passes": len(self.groups),
            "peak_bytes": self.peak_bytes,
            "groups": [
                {"layers": sorted({s.layer for s in g}), "bytes": sum(s.nbytes for s in g)}
                for g in self.groups
            ],
        }


def statistics_needed(config: Any, edits: Sequence[Any]) -> list[Statistic]:
    """The accumulators ``edits`` (from ``plan_edits``) need, in layer order, with sizes."""
    hidden = config.hidden_size
    fit = LinearFit.bytes_for(hidden, hidden)
    stats = []
    for edit in edits:
        if edit.attention == "linear":
            stats.append(Statistic(edit.layer, "attention", "linear", fit))
        if edit.ffn == "linear":
            stats.append(Statistic(edit.layer, "ffn", "linear", fit))
        elif edit.ffn == "resize":
            width = config.block_configs[edit.layer].ffn.intermediate_size(hidden)
            stats.append(Statistic(edit.layer, "ffn", "channels", ChannelStats.bytes_for(width)))
    return stats


def plan_calibration(
    config: Any, edits: Sequence[Any], memory: CalibrationMemory | None = None
) -> CalibrationPlan:
    """Group the statistics of ``edits`` into passes that fit ``memory.budget_bytes``.

    Consecutive statistics (layer order) share a pass until the next would exceed the
    budget, so each pass stops as early in the model as it can. Needs only the config.

    Raises:
        MinitronError: If one accumulator alone is larger than the budget.
    """
    memory = memory or CalibrationMemory()
    budget = memory.budget_bytes
    groups: list[tuple[Statistic, ...]] = []
    current: list[Statistic] = []
    for stat in statistics_needed(config, edits):
        if budget is not None and stat.nbytes > budget:
            raise MinitronError(
                f"calibration budget {budget / GIB:.3g} GiB is too small: the {stat.kind} "
                f"statistic of layer {stat.layer} ({stat.part}) alone needs "
                f"{stat.nbytes / GIB:.3g} GiB"
            )
        if current and budget is not None and sum(s.nbytes for s in current) + stat.nbytes > budget:
            groups.append(tuple(current))
            current = []
        current.append(stat)
    if current:
        groups.append(tuple(current))
    return CalibrationPlan(memory, tuple(groups))


@dataclass
class Calibration:
    """What ``collect_statistics`` gathered: results per ``(layer, part)`` and a record.

    ``results`` holds a ``SolvedFit`` for a linear sub-block and a ``[I]`` float64 CPU
    tensor of channel means for a resized FFN; ``record`` is the plan's ``to_dict``
    plus what was measured: the devices the accumulators lived on, the peak bytes they
    held, and the bytes of solved weights kept on the CPU until the edits.
    """

    results: dict[tuple[int, str], Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def collect_statistics(
    model: nn.Module,
    edits: Sequence[Any],
    batches: Sequence[torch.Tensor],
    ridge: float,
    memory: CalibrationMemory | None = None,
) -> Calibration:
    """Gather what ``edits`` need from the (unedited) ``model``, one pass per group.

    Does not change the model. Linear fits are solved at the end of their pass
    (``ridge`` as in ``LinearFit.solve``); their weights are kept on the CPU in the
    dtype of the layer they will be copied into.

    Raises:
        MinitronError: If some edit needs data and ``batches`` is empty, or an
            accumulator does not fit the budget.
    """
    plan = plan_calibration(model.config, edits, memory)
    calibration = Calibration(record=plan.to_dict())
    if not plan.groups:
        return calibration
    if not batches:
        raise MinitronError("these edits need calibration data, and none was given")
    device = "cpu" if plan.memory.accumulate_on == "cpu" else None
    peak, devices = 0, set()
    with progress("calibrating", len(batches) * len(plan.groups)) as advance:
        for group in plan.groups:
            accumulators = _gather(model, group, batches, device, advance)
            held = sum(acc.nbytes for acc in accumulators.values())
            expected = sum(s.nbytes for s in group)
            assert held == expected, (held, expected)  # the plan's arithmetic is what ran
            peak = max(peak, held)
            devices |= set().union(*(acc.devices for acc in accumulators.values()))
            for key, acc in accumulators.items():
                calibration.results[key] = _finish(model, key, acc, ridge)
            del accumulators
    fitted = sum(r.weight.nbytes for r in calibration.results.values() if hasattr(r, "weight"))
    calibration.record |= {
        "measured_peak_bytes": peak,
        "devices": sorted(devices),
        "fitted_weights_bytes_on_cpu": fitted,
    }
    return calibration


def _gather(model, group, batches, device, advance) -> dict[tuple[int, str], Any]:
    """One pass over ``batches`` with hooks filling the accumulators of ``group``."""
    accumulators: dict[tuple[int, str], Any] = {}
    handles = []
    for stat in group:
        layer = model.model.layers[stat.layer]
        if stat.kind == "linear":
            acc = LinearFit(device)
            module = layer.self_attn if stat.part == "attention" else layer.mlp
            handles.append(io_hook(module, acc.add))
        else:
            acc = ChannelStats(device)
            handles.append(input_hook(layer.mlp.down_proj, acc.add))
        accumulators[stat.layer, stat.part] = acc
    with hooks(handles):
        run_batches(model, batches, last_layer=max(s.layer for s in group), advance=advance)
    return accumulators


def _finish(model: nn.Module, key: tuple[int, str], acc: Any, ridge: float) -> Any:
    if isinstance(acc, ChannelStats):
        return acc.mean()
    layer, part = key
    norm = "input_layernorm" if part == "attention" else "post_attention_layernorm"
    dtype = getattr(model.model.layers[layer], norm).weight.dtype
    return acc.finish(ridge, dtype)

"""``minitron prune`` with ``block_configs`` or ``rules``: a nemotron-nas checkpoint.

Everything that can be checked from configs (rules, block list, edits that have
nothing to start from, the engine named by ``serve_with``) is checked before any
weights load, also by the dry run. The edits themselves are ``minitron.nas``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minitron import __version__
from minitron.commands.prune_config import PruneConfig
from minitron.config import config_to_dict
from minitron.data import batches, load_text_data
from minitron.eval.perplexity import perplexity
from minitron.io import (
    atomic_output_dir,
    check_output_dir,
    load_config,
    load_model,
    saved_dtype,
)
from minitron.modeling import BlockConfig, DeciLMConfig, llama_to_nas, nas_config_from_llama
from minitron.nas import apply_edits, layer_parameters, plan_edits
from minitron.nas.collect import CalibrationPlan, collect_statistics, plan_calibration
from minitron.nas.engines import check_engine
from minitron.nas.rules import resolve_block_configs, resolve_rules, runs_of_blocks
from minitron.prune import count_parameters


@dataclass(frozen=True)
class BlocksPlan:
    """A block-edit recipe resolved against its parent's config (no weights)."""

    parent: Any  # the parent's own config (Llama or nemotron-nas)
    base: DeciLMConfig  # the parent as nemotron-nas
    blocks: list[BlockConfig]  # the target block of every layer
    target: DeciLMConfig  # the output's config
    calibration: CalibrationPlan  # the statistics the edits need, grouped into passes

    @property
    def needs_calibration(self) -> bool:
        """True when some edit is fitted on data (narrower / wider FFN, linear sub-block)."""
        return bool(self.calibration.groups)


def plan_blocks(config: PruneConfig) -> BlocksPlan:
    """Resolve and check a block-edit recipe from the parent's config alone.

    Raises:
        MinitronError: On a parent that is neither Llama nor nemotron-nas, a bad rule or
            block list, an edit with nothing to start from, a block kind the engine
            named by ``serve_with`` cannot serve, or a calibration budget below one
            accumulator.
    """
    parent = load_config(config.parent, config.trust_remote_code)
    base = parent if isinstance(parent, DeciLMConfig) else nas_config_from_llama(parent)
    if config.rules is not None:
        blocks = resolve_rules(base, config.rules)
    else:
        blocks = resolve_block_configs(base, config.block_configs)
    calibration = plan_calibration(base, plan_edits(base, blocks), config.calibration_memory)
    target = base.with_blocks(blocks)
    check_engine(config.serve_with, target)
    return BlocksPlan(parent, base, blocks, target, calibration)


def block_summary(plan: BlocksPlan) -> list[dict[str, Any]]:
    """One entry per layer: its block before and after, and its parameters."""
    before, after = layer_parameters(plan.base), layer_parameters(plan.target)
    return [
        {
            "layer": i,
            "before": old.describe(),
            "after": new.describe(),
            "params_before": before[i],
            "params_after": after[i],
        }
        for i, (old, new) in enumerate(zip(plan.base.block_configs, plan.blocks, strict=True))
    ]


def grouped_summary(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``block_summary`` with runs of consecutive identical layers merged."""
    keys = [(s["before"], s["after"], s["params_after"]) for s in summary]
    return [
        {"layers": [first, last], "before": key[0], "after": key[1], "params_after": key[2]}
        for first, last, key in runs_of_blocks(keys)
    ]


def blocks_dry_run(config: PruneConfig) -> dict[str, Any]:
    """Plan a block-edit prune from configs alone, on the meta device (any size).

    Returns the keys of the depth dry run plus ``blocks`` (one entry per layer),
    ``serve_with`` and ``calibration_memory`` (the planned passes and accumulator
    bytes, ``None`` when no edit needs data). Every layer stays in the checkpoint (a
    layer whose attention and FFN are both no_op holds no weights), so
    ``dropped_layers`` is empty.
    """
    from minitron.modeling import count_parameters as config_parameters

    plan = plan_blocks(config)
    layers = plan.base.num_hidden_layers
    before, after = config_parameters(plan.base), config_parameters(plan.target)
    return {
        "params_before": before,
        "params_after": after,
        "layers_before": layers,
        "layers_after": layers,
        "kept_layers": list(range(layers)),
        "dropped_layers": [],
        "bf16_bytes_before": before * 2,
        "bf16_bytes_after": after * 2,
        "serve_with": config.serve_with,
        "calibration_memory": plan.calibration.to_dict() if plan.needs_calibration else None,
        "blocks": block_summary(plan),
    }


def run_blocks_prune(config: PruneConfig, output: str | Path, overwrite: bool) -> dict[str, Any]:
    """Edit every block of ``config.parent`` and save a nemotron-nas checkpoint to ``output``.

    A Llama parent is converted losslessly (``llama_to_nas``); the edits are fitted on
    ``config.data``'s calibration split; weights are saved in the parent's dtype with
    the tokenizer and ``prune.json``, into a temporary folder renamed on success.

    Returns:
        The record also saved as ``prune.json``.
    """
    output = check_output_dir(output, overwrite, protect=[config.parent])
    plan = plan_blocks(config)
    model, tokenizer = load_model(
        config.parent, config.dtype, config.device, config.trust_remote_code
    )
    nas = model if isinstance(model.config, DeciLMConfig) else llama_to_nas(model)
    calibrate = plan.needs_calibration
    data = load_text_data(config.data, tokenizer) if calibrate or config.perplexity else None
    calibration = batches(data.calibration, config.data.batch_size) if calibrate else []
    heldout = batches(data.heldout, config.data.batch_size) if config.perplexity else []
    layers = plan.base.num_hidden_layers
    record: dict[str, Any] = {
        "kind": "prune",
        "method": "blocks",
        "parent": config.parent,
        "layer_indexing": "0-indexed",
        "layers_before": layers,
        "layers_after": layers,
        "params_before": count_parameters(nas),
    }
    if heldout:
        record["perplexity_before"] = perplexity(nas, heldout, "parent")
    record["layers"], memory = _edit(nas, plan, calibration, config)
    record["params_after"] = count_parameters(nas)
    if heldout:
        record["perplexity_after"] = perplexity(nas, heldout, "pruned")
        record["heldout"] = {"sequences": len(data.heldout), "seq_len": config.data.seq_len}
    record["calibration"] = _calibration_record(config, data, calibrate)
    record["calibration_memory"] = memory if calibrate else None
    record["serve_with"] = config.serve_with
    record["recipe"] = config_to_dict(config)
    record["minitron_version"] = __version__
    dtype = saved_dtype(plan.parent, nas)
    record["dtype"] = {"compute": _name(nas.dtype), "saved": _name(dtype)}
    _save(nas, tokenizer, dtype, output, overwrite, record)
    record["output"] = str(output)
    return record


def _edit(nas, plan: BlocksPlan, calibration: list, config: PruneConfig) -> tuple[list, dict]:
    """Gather the statistics and make the edits, in place: (per-layer records, memory record)."""
    edits = plan_edits(nas.config, plan.blocks)
    memory = config.calibration_memory
    statistics = collect_statistics(nas, edits, calibration, config.ridge, memory)
    return apply_edits(nas, edits, statistics), statistics.record


def _name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _calibration_record(config: PruneConfig, data: Any, used: bool) -> dict[str, Any] | None:
    """What the fitted edits were calibrated on (None when no edit needed data)."""
    if not used:
        return None
    return {**data.info, "batch_size": config.data.batch_size, "ridge": config.ridge}


def _save(nas, tokenizer, dtype, output: Path, overwrite: bool, record: dict) -> None:
    nas = nas.to(dtype)
    nas.config.architectures = ["DeciLMForCausalLM"]
    with atomic_output_dir(output, overwrite) as tmp:
        nas.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "prune.json").write_text(json.dumps(record, indent=2) + "\n")

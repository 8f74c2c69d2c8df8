"""The ``minitron prune`` command: its typed config, the dry run and the real run.

The edits themselves live in ``minitron.prune`` (depth); this module reads the
parent and the data, calls them and writes the checkpoint with ``prune.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from minitron import __version__
from minitron.commands.importance import score_layers
from minitron.commands.prune_config import PruneConfig
from minitron.commands.prune_scores import load_scores
from minitron.config import config_to_dict
from minitron.data import batches, load_text_data
from minitron.eval.perplexity import perplexity
from minitron.importance import ImportanceResult
from minitron.io import (
    atomic_output_dir,
    check_output_dir,
    in_saved_dtype,
    load_config,
    load_model,
)
from minitron.prune import (
    check_request,
    count_parameters,
    drop_count,
    drop_layers,
    per_layer_updates,
    plan_depth,
    scores_block_size,
)


def _prepare(config: PruneConfig) -> tuple[Any, int, ImportanceResult | None]:
    """Everything checkable without weights: parent config, layer count, scores file."""
    parent_config = load_config(config.parent, config.trust_remote_code)
    num_layers = parent_config.num_hidden_layers
    check_request(config, num_layers)
    per_layer_updates(parent_config, list(range(num_layers)), num_layers)  # refuse early
    scores = load_scores(config.scores, config, num_layers) if config.scores else None
    return parent_config, num_layers, scores


def dry_run(config: PruneConfig) -> dict[str, Any]:
    """Plan a prune from the parent's config alone: no weights are read.

    A block-edit recipe (``block_configs`` / ``rules``) is planned by
    ``minitron.commands.prune_blocks.blocks_dry_run``, a width or target recipe by
    ``minitron.commands.prune_width.width_dry_run``; the rest is depth pruning.

    The parent is built on the meta device, so even a 70B config costs
    nothing. Layer choice needs scores: with a method and no ``scores`` file
    the kept and dropped layers are ``None`` (decided when weights are
    scored); the parameter counts are exact either way, as depth pruning
    removes whole layers of equal size.
    """
    from transformers import AutoModelForCausalLM

    if config.edits_blocks:
        from minitron.commands.prune_blocks import blocks_dry_run

        return blocks_dry_run(config)
    if config.edits_width or config.target is not None:
        from minitron.commands.prune_width import width_dry_run

        return width_dry_run(config)
    parent_config, num_layers, scores = _prepare(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            parent_config, trust_remote_code=config.trust_remote_code
        )
    params_before = count_parameters(model)
    plan = (
        plan_depth(config, num_layers, scores) if config.selection == "explicit" or scores else None
    )
    layers_after = num_layers - drop_count(config, num_layers)
    drop_layers(model, plan.dropped if plan else range(layers_after, num_layers))
    params_after = count_parameters(model)
    return {
        "params_before": params_before,
        "params_after": params_after,
        "layers_before": num_layers,
        "layers_after": layers_after,
        "kept_layers": plan.kept if plan else None,
        "dropped_layers": plan.dropped if plan else None,
        "bf16_bytes_before": params_before * 2,
        "bf16_bytes_after": params_after * 2,
    }


def run_prune(config: PruneConfig, output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Prune ``config.parent`` and write the result to ``output``.

    A block-edit recipe goes to ``minitron.commands.prune_blocks.run_blocks_prune``
    (a nemotron-nas checkpoint), a width or target recipe to
    ``minitron.commands.prune_width.run_width_prune``; what follows describes depth pruning.

    Checks the recipe against the parent's config and the output folder
    before any weights load; writes into a temporary folder renamed on
    success. The saved weights are exact copies of the parent's kept layers
    in the parent's dtype, whatever dtype the scoring ran in.

    Returns:
        The record also saved as ``prune.json`` in the output folder.
    """
    if config.edits_blocks:
        from minitron.commands.prune_blocks import run_blocks_prune

        return run_blocks_prune(config, output, overwrite)
    if config.edits_width or config.target is not None:
        from minitron.commands.prune_width import run_width_prune

        return run_width_prune(config, output, overwrite)
    output = check_output_dir(output, overwrite, protect=[config.parent])
    parent_config, num_layers, scores = _prepare(config)
    needs_scores = config.selection != "explicit" and scores is None
    model, tokenizer = load_model(
        config.parent, config.dtype, config.device, config.trust_remote_code
    )
    data = load_text_data(config.data, tokenizer) if needs_scores or config.perplexity else None
    if needs_scores:
        calibration = batches(data.calibration, config.data.batch_size)
        size = scores_block_size(config, num_layers)
        scores = score_layers(
            model, tokenizer, config.metric, calibration, size, False, config.task
        )
        scores.data = data.info
    plan = plan_depth(config, num_layers, scores)
    heldout = batches(data.heldout, config.data.batch_size) if data and config.perplexity else []
    record: dict[str, Any] = {
        "parent": config.parent,
        "layer_indexing": "0-indexed",
        "kept_layers": plan.kept,
        "dropped_layers": plan.dropped,
        "reason": plan.reason,
        "layers_before": num_layers,
        "layers_after": len(plan.kept),
        "params_before": count_parameters(model),
    }
    if heldout:
        record["perplexity_before"] = perplexity(model, heldout, "parent")
    drop_layers(model, plan.dropped)
    record["params_after"] = count_parameters(model)
    if heldout:
        record["perplexity_after"] = perplexity(model, heldout, "pruned")
        record["heldout"] = {"sequences": len(data.heldout), "seq_len": config.data.seq_len}
    record["scores"] = scores.to_dict() if scores else None
    record["recipe"] = config_to_dict(config)
    record["minitron_version"] = __version__

    def redo(parent: Any) -> Any:
        drop_layers(parent, plan.dropped)
        return parent

    model = in_saved_dtype(
        model, model, parent_config, config.parent, redo, config.trust_remote_code
    )
    with atomic_output_dir(output, overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "prune.json").write_text(json.dumps(record, indent=2) + "\n")
    record["output"] = str(output)
    return record

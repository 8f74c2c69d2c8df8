"""Depth pruning: drop decoder layers and save a standard HF checkpoint.

``drop_layers`` edits a model in place; ``plan_depth`` decides which layers to
drop from a recipe and importance scores; ``dry_run`` and ``run_prune`` are the
``minitron prune`` command. The output is the parent's own architecture
(``LlamaForCausalLM`` for Llama) with fewer layers, loadable by stock
``transformers`` without minitron.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minitron import __version__
from minitron.config import PruneConfig, config_to_dict
from minitron.data import batches, load_text_data
from minitron.errors import MinitronError
from minitron.evaluate import perplexity
from minitron.importance import ImportanceResult, compute_importance
from minitron.io import atomic_output_dir, check_output_dir, load_config, load_model
from minitron.layers import decoder, decoder_layers


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``; tied weights are counted once."""
    return sum(p.numel() for p in model.parameters())


def drop_layers(model: nn.Module, layers: Iterable[int]) -> list[int]:
    """Remove decoder layers ``layers`` (0-indexed) from ``model``, in place.

    Renumbers each kept attention's ``layer_idx`` and sets
    ``config.num_hidden_layers`` (and ``config.layer_types`` where present) so
    generation with a KV cache works on the result.

    Returns:
        The kept layers' parent indices, in order.

    Raises:
        MinitronError: On an index out of range or dropping every layer.
    """
    current = decoder_layers(model)
    num_layers = len(current)
    dropped = set(layers)
    check_drop_indices(dropped, num_layers)
    kept = [i for i in range(num_layers) if i not in dropped]
    decoder(model).layers = nn.ModuleList(current[i] for i in kept)
    for new_index, layer in enumerate(decoder(model).layers):
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == num_layers:
        config.layer_types = [layer_types[i] for i in kept]
    return kept


def check_drop_indices(indices: Iterable[int], num_layers: int) -> None:
    """Reject indices outside ``0..num_layers-1`` or a request to drop everything."""
    indices = set(indices)
    for index in sorted(indices):
        if not 0 <= index < num_layers:
            raise MinitronError(
                f"drop index {index} out of range: the model has {num_layers} layers "
                f"(0..{num_layers - 1}, 0-indexed)"
            )
    if len(indices) >= num_layers:
        raise MinitronError(f"cannot drop all {num_layers} layers")


@dataclass(frozen=True)
class DepthPlan:
    """Which parent layers to keep and why (0-indexed)."""

    layers_before: int
    kept: list[int]
    dropped: list[int]
    reason: str


def check_request(config: PruneConfig, num_layers: int) -> None:
    """Reject a recipe that cannot apply to a ``num_layers``-layer parent."""
    if config.drop_layers is not None:
        check_drop_indices(config.drop_layers, num_layers)
        expected = num_layers - len(config.drop_layers)
        if config.target_layers is not None and config.target_layers != expected:
            raise MinitronError(
                f"target_layers is {config.target_layers} but dropping "
                f"{len(config.drop_layers)} of {num_layers} layers leaves {expected}"
            )
    elif config.target_layers >= num_layers:
        raise MinitronError(
            f"target_layers ({config.target_layers}) must be below the parent's {num_layers} layers"
        )


def drop_count(config: PruneConfig, num_layers: int) -> int:
    """How many layers the recipe removes from a ``num_layers``-layer parent."""
    if config.drop_layers is not None:
        return len(config.drop_layers)
    return num_layers - config.target_layers


def scores_block_size(config: PruneConfig, num_layers: int) -> int:
    """The block size the recipe's method needs scores for."""
    return drop_count(config, num_layers) if config.selection == "contiguous" else 1


def plan_depth(
    config: PruneConfig, num_layers: int, scores: ImportanceResult | None = None
) -> DepthPlan:
    """Choose the layers to drop, from the recipe and (for a method) scores."""
    check_request(config, num_layers)
    count = drop_count(config, num_layers)
    if config.selection == "explicit":
        dropped = sorted(config.drop_layers)
        reason = "explicit drop_layers"
    elif scores is None:
        raise MinitronError(f"method '{config.selection}' needs importance scores")
    elif config.selection == "individual" or count == 1:
        dropped = scores.least_important_layers(count)
        reason = f"{count} individually least important layer(s) by {scores.metric}"
    elif scores.block_size == count:
        dropped = scores.block(scores.least_important_block())
        reason = f"least important contiguous block of {count} by {scores.metric}"
    else:
        raise MinitronError(
            f"scores have blocks of {scores.block_size} layers; dropping {count} layers "
            f"needs blocks of {count} (minitron importance --block-size {count})"
        )
    kept = [i for i in range(num_layers) if i not in set(dropped)]
    assert len(dropped) == count, (dropped, count)
    return DepthPlan(num_layers, kept, dropped, reason)


def load_scores(path: str | Path, config: PruneConfig, num_layers: int) -> ImportanceResult:
    """Read a ``scores.json`` and check it fits the recipe and the parent."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MinitronError(f"scores file not found: {path}")
    not_scores = MinitronError(f"{path}: not a scores.json written by minitron importance")
    try:
        result = ImportanceResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError):
        raise not_scores from None
    if result.num_layers != num_layers:
        raise MinitronError(
            f"{path}: scores are for {result.num_layers} layers, the parent has {num_layers}"
        )
    blocks = num_layers - result.block_size + 1
    if len(result.layers) != num_layers or len(result.blocks) != blocks:
        raise not_scores
    if result.metric != config.metric:
        raise MinitronError(
            f"{path}: scores use metric '{result.metric}', recipe asks for '{config.metric}'"
        )
    needed = scores_block_size(config, num_layers)
    if needed != 1 and result.block_size != needed:
        raise MinitronError(
            f"{path}: scores have blocks of {result.block_size} layers, dropping to "
            f"{config.target_layers} layers needs blocks of {needed} (--block-size {needed})"
        )
    return result


def _prepare(config: PruneConfig) -> tuple[Any, int, ImportanceResult | None]:
    """Everything checkable without weights: parent config, layer count, scores file."""
    parent_config = load_config(config.parent, config.trust_remote_code)
    num_layers = parent_config.num_hidden_layers
    check_request(config, num_layers)
    scores = load_scores(config.scores, config, num_layers) if config.scores else None
    return parent_config, num_layers, scores


def dry_run(config: PruneConfig) -> dict[str, Any]:
    """Plan a prune from the parent's config alone: no weights are read.

    The parent is built on the meta device, so even a 70B config costs
    nothing. Layer choice needs scores: with a method and no ``scores`` file
    the kept and dropped layers are ``None`` (decided when weights are
    scored); the parameter counts are exact either way, as depth pruning
    removes whole layers of equal size.
    """
    from transformers import AutoModelForCausalLM

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

    Checks the recipe against the parent's config and the output folder
    before any weights load; writes into a temporary folder renamed on
    success. The saved weights are exact copies of the parent's kept layers
    in the parent's dtype, whatever dtype the scoring ran in.

    Returns:
        The record also saved as ``prune.json`` in the output folder.
    """
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
        scores = compute_importance(model, calibration, config.metric, size, single_layers=False)
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
    model = _weights_to_save(model, config, parent_config, plan)
    with atomic_output_dir(output, overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "prune.json").write_text(json.dumps(record, indent=2) + "\n")
    record["output"] = str(output)
    return record


def _weights_to_save(
    model: nn.Module, config: PruneConfig, parent_config: Any, plan: DepthPlan
) -> nn.Module:
    """The pruned model in the parent's dtype, with the parent's exact values.

    Casting back is exact when the compute dtype holds every value of the
    parent's (same dtype, or float32 compute for 16-bit weights). Otherwise
    (say bfloat16 compute for float32 weights) the parent is loaded again in
    its own dtype on the CPU and pruned the same way.
    """
    saved = _saved_dtype(parent_config, model)
    computed = next(model.parameters()).dtype
    if computed == saved or (computed == torch.float32 and saved in _HALF):
        return model.to(saved)
    parent, _ = load_model(
        config.parent, str(saved).removeprefix("torch."), "cpu", config.trust_remote_code
    )
    drop_layers(parent, plan.dropped)
    return parent


_HALF = (torch.bfloat16, torch.float16)


def _saved_dtype(parent_config: Any, model: nn.Module) -> torch.dtype:
    """The parent's own weight dtype, so pruning never inflates the checkpoint."""
    dtype = getattr(parent_config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype

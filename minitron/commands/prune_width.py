"""``minitron prune`` with widths (and optionally depth), or with a ``target`` budget.

Everything checkable from the parent's config (the shape, the depth request,
the budget against the smallest candidate) is checked before weights load, also
by the dry run. The algorithms are ``minitron.importance.width``,
``minitron.prune.width`` and ``minitron.prune.target``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minitron import __version__
from minitron.commands.importance import score_layers
from minitron.commands.prune_config import WIDTH_KEYS, PruneConfig
from minitron.commands.prune_scores import load_scores
from minitron.config import config_to_dict
from minitron.data import batches, load_text_data
from minitron.errors import MinitronError
from minitron.eval.perplexity import perplexity
from minitron.importance import loss_scores, similarity_scores
from minitron.importance.width import WidthScores, width_importance
from minitron.io import (
    atomic_output_dir,
    check_output_dir,
    in_saved_dtype,
    load_config,
    load_model,
)
from minitron.layers import decoder_layers
from minitron.progress import status
from minitron.prune import check_request, count_parameters, layers_removed, per_layer_updates
from minitron.prune.depth import DepthPlan, drop_count, plan_depth, scores_block_size
from minitron.prune.target import Candidate, budget_params, enumerate_candidates, heldout_kl
from minitron.prune.width import (
    WidthPlan,
    WidthShape,
    check_shape,
    first_k_plan,
    head_dim_of,
    is_nas,
    parent_shape,
    plan_width,
    requested_shape,
    slice_model,
)

# Candidates listed by a dry run (all of them go to candidates.json in a real run).
SHOWN_CANDIDATES = 10


@dataclass(frozen=True)
class WidthRequest:
    """A width or target recipe checked against its parent's config (no weights)."""

    parent: Any
    num_layers: int
    shape: WidthShape | None  # explicit widths; None for a target search
    scores: Any  # depth ImportanceResult from ``scores``, or None
    budget: int | None  # target: parameter budget
    candidates: list[Candidate]  # target: within the budget, closest first


def check_width_request(config: PruneConfig) -> WidthRequest:
    """Resolve a width / target recipe from the parent's config alone.

    Raises:
        MinitronError: On a nemotron-nas parent, a shape the parent cannot be cut
            to, a bad depth request, or a budget below the smallest candidate.
    """
    parent = load_config(config.parent, config.trust_remote_code)
    num_layers = parent.num_hidden_layers
    per_layer_updates(parent, list(range(num_layers)), num_layers)  # refuse layer patterns early
    if config.target is not None and is_nas(parent):
        raise MinitronError(
            "target searches Llama shapes; a nemotron-nas parent's blocks differ layer by "
            "layer (give hidden_size, or block edits)"
        )
    if config.target is not None:
        budget = budget_params(config.target.params, config.target.memory_gib)
        candidates = enumerate_candidates(parent, budget, config.target.grid)
        return WidthRequest(parent, num_layers, None, None, budget, candidates)
    shape = requested_shape(parent, **{key: getattr(config, key) for key in WIDTH_KEYS})
    check_shape(parent, shape)
    scores = None
    if config.depth_requested:
        check_request(config, num_layers)
        scores = load_scores(config.scores, config, num_layers) if config.scores else None
    return WidthRequest(parent, num_layers, shape, scores, None, [])


def _meta_parent(config: PruneConfig, parent_config: Any) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            parent_config, trust_remote_code=config.trust_remote_code
        )


def width_dry_run(config: PruneConfig) -> dict[str, Any]:
    """Plan a width or target prune from the config alone: shapes and exact parameter counts.

    The parent is built on the meta device and cut with the real slicing code
    (first channels standing in for the important ones: the counts do not depend
    on which are kept).
    """
    request = check_width_request(config)
    parent = _meta_parent(config, request.parent)
    record = _shape_record(request.parent, count_parameters(parent), request.num_layers)
    if config.target is not None:
        return record | _target_record(config, request)
    kept = _depth_plan_without_weights(config, request)
    dropped = drop_count(config, request.num_layers) if config.depth_requested else 0
    layers_after = request.num_layers - dropped
    layers = kept.kept if kept else list(range(layers_after))
    student = slice_model(parent, first_k_plan(request.parent, request.shape, layers))
    return record | {
        "params_after": count_parameters(student),
        "layers_after": layers_after,
        "shape_after": request.shape.to_dict(),
        "kept_layers": kept.kept if kept else None,
        "dropped_layers": kept.dropped if kept else None,
        "bf16_bytes_after": 2 * count_parameters(student),
    }


def _shape_record(parent: Any, params: int, num_layers: int) -> dict[str, Any]:
    return {
        "params_before": params,
        "layers_before": num_layers,
        "shape_before": parent_shape(parent).to_dict(),
        "head_dim": head_dim_of(parent),
        "bf16_bytes_before": 2 * params,
    }


def _target_record(config: PruneConfig, request: WidthRequest) -> dict[str, Any]:
    top = request.candidates[: config.target.top_k]
    best = top[0]
    return {
        "budget_params": request.budget,
        "candidates_within_budget": len(request.candidates),
        "candidates": [c.to_dict() for c in request.candidates[:SHOWN_CANDIDATES]],
        "scored": config.target.top_k,
        "params_after": best.params,
        "layers_after": best.layers,
        "shape_after": best.shape.to_dict(),
        "bf16_bytes_after": 2 * best.params,
        "note": f"the {len(top)} closest candidates are scored by held-out KL when run",
    }


def _depth_plan_without_weights(config: PruneConfig, request: WidthRequest) -> DepthPlan | None:
    if not config.depth_requested:
        return DepthPlan(
            request.num_layers, list(range(request.num_layers)), [], "no layers dropped"
        )
    if config.selection == "explicit" or request.scores is not None:
        return plan_depth(config, request.num_layers, request.scores)
    return None


def width_student(
    model: nn.Module, kept: list[int], shape: WidthShape, calibration: list[torch.Tensor]
) -> tuple[nn.Module, WidthPlan, WidthScores]:
    """Score the widths of ``model`` without its dropped layers; cut the kept ones to ``shape``."""
    dropped = [i for i in range(len(decoder_layers(model))) if i not in set(kept)]
    with layers_removed(model, dropped):
        scores = width_importance(model, calibration)
    plan = plan_width(scores, shape, kept)
    return slice_model(model, plan), plan, scores


def run_width_prune(
    config: PruneConfig, output: str | Path, overwrite: bool = False
) -> dict[str, Any]:
    """Prune widths (after any depth pruning), or search a ``target``; write the checkpoint.

    Writes the model, its tokenizer, ``prune.json`` (the record returned),
    ``width_scores.json`` (the activation importance the cut used) and, for a
    target, ``candidates.json`` (every candidate within the budget; the scored
    ones with their held-out KL).
    """
    output = check_output_dir(output, overwrite, protect=[config.parent])
    request = check_width_request(config)
    model, tokenizer = load_model(
        config.parent, config.dtype, config.device, config.trust_remote_code
    )
    data = load_text_data(config.data, tokenizer)
    calibration = batches(data.calibration, config.data.batch_size)
    heldout = batches(data.heldout, config.data.batch_size)
    params_before = count_parameters(model)
    record = _shape_record(request.parent, params_before, request.num_layers)
    record = {"parent": config.parent, "layer_indexing": "0-indexed"} | record
    candidates = None
    if config.target is not None:
        if not heldout:
            raise MinitronError("target needs held-out data to score candidates (data.heldout)")
        student, plan, scores, candidates, depth = _search(
            model, config, request, calibration, heldout
        )
        record["budget_params"] = request.budget
    else:
        depth = _depth_plan(model, tokenizer, config, request, calibration)
        student, plan, scores = width_student(model, depth.kept, request.shape, calibration)
    record |= {
        "kept_layers": depth.kept,
        "dropped_layers": depth.dropped,
        "reason": depth.reason,
        "layers_after": len(depth.kept),
        "params_after": count_parameters(student),
        "shape_after": _shape_of(plan, request.parent),
        "importance": "activations: mean |x| over the sequence, L2 norm over the batch",
    }
    if heldout and config.perplexity:
        record["perplexity_before"] = perplexity(model, heldout, "parent")
        record["perplexity_after"] = perplexity(student, heldout, "pruned")
        record["heldout"] = {"sequences": len(data.heldout), "seq_len": config.data.seq_len}
    record["width_plan"] = plan.to_dict()
    record["recipe"] = config_to_dict(config)
    record["minitron_version"] = __version__
    student = in_saved_dtype(
        student, model, request.parent, config.parent,
        lambda parent: slice_model(parent, plan), config.trust_remote_code,
    )  # fmt: skip
    with atomic_output_dir(output, overwrite) as tmp:
        with status(f"saving {output}"):
            student.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        (tmp / "prune.json").write_text(json.dumps(record, indent=2) + "\n")
        scores.data = data.info
        (tmp / "width_scores.json").write_text(json.dumps(scores.to_dict()) + "\n")
        if candidates is not None:
            (tmp / "candidates.json").write_text(json.dumps(candidates, indent=2) + "\n")
    record["output"] = str(output)
    if candidates is not None:
        record["candidates"] = [c for c in candidates["candidates"] if "kl" in c]
    return record


def _shape_of(plan: WidthPlan, parent: Any) -> dict[str, int | None]:
    heads = next(len(row) for row in plan.heads if row)
    if is_nas(parent):  # FFN widths and K/V heads are per block
        return WidthShape(len(plan.hidden), None, heads, None).to_dict()
    return WidthShape(
        len(plan.hidden), len(plan.neurons[0]), heads, len(plan.kv_heads[0])
    ).to_dict()


def _depth_plan(
    model: nn.Module, tokenizer: Any, config: PruneConfig, request: WidthRequest, calibration: list
) -> DepthPlan:
    """The layers to keep: all, the recipe's, or chosen by depth importance."""
    plan = _depth_plan_without_weights(config, request)
    if plan is not None:
        return plan
    size = scores_block_size(config, request.num_layers)
    scores = score_layers(model, tokenizer, config.metric, calibration, size, False, config.task)
    return plan_depth(config, request.num_layers, scores)


def _depth_choices(
    model: nn.Module, config: PruneConfig, num_layers: int, counts: set[int], calibration: list
) -> dict[int, list[int]]:
    """For each number of layers to drop, the layers the recipe's method drops.

    ``contiguous``: the least important block of that size; ``individual``: the
    least important single layers. Every size is scored in one pass over the data.
    """
    counts = {c for c in counts if c > 0}
    if not counts:
        return {0: []}
    sizes = sorted(counts) if config.selection == "contiguous" else [1]
    if config.metric == "loss":
        _, scores, _ = loss_scores(model, calibration, sizes)
    else:
        scores, _ = similarity_scores(model, calibration, config.metric, sizes)
    choices: dict[int, list[int]] = {0: []}
    for count in counts:
        if config.selection == "contiguous":
            row = scores[count]
            start = min(range(len(row)), key=row.__getitem__)
            choices[count] = list(range(start, start + count))
        else:
            row = scores[1]
            choices[count] = sorted(sorted(range(num_layers), key=row.__getitem__)[:count])
    return choices


def _search(
    model: nn.Module,
    config: PruneConfig,
    request: WidthRequest,
    calibration: list,
    heldout: list,
) -> tuple[nn.Module, WidthPlan, WidthScores, dict[str, Any], DepthPlan]:
    """Prune and score the ``top_k`` candidates by held-out KL; return the best."""
    num_layers = request.num_layers
    top = request.candidates[: config.target.top_k]
    drops = _depth_choices(
        model, config, num_layers, {num_layers - c.layers for c in top}, calibration
    )
    scored: list[dict[str, Any]] = []
    best = None
    for rank, candidate in enumerate(top):
        dropped = drops[num_layers - candidate.layers]
        kept = [i for i in range(num_layers) if i not in set(dropped)]
        student, plan, scores = width_student(model, kept, candidate.shape, calibration)
        kl = heldout_kl(model, student, heldout)
        scored.append(candidate.to_dict() | {"rank": rank, "kl": kl, "dropped_layers": dropped})
        if best is None or kl < best[0]:
            best = (kl, rank, student, plan, scores, dropped)
        del student
    kl, rank, student, plan, scores, dropped = best
    what = "contiguous block" if config.selection == "contiguous" else "single layers"
    depth = DepthPlan(
        num_layers,
        [i for i in range(num_layers) if i not in set(dropped)],
        dropped,
        f"target: candidate {rank} of {len(top)} scored, lowest held-out KL {kl:.4f} "
        f"(layers: least important {what} by {config.metric})",
    )
    listing = {
        "budget_params": request.budget,
        "scored": len(top),
        "best": rank,
        "kl": "mean per-token KL(parent || candidate) on held-out text, nats, no training",
        "candidates": scored + [c.to_dict() for c in request.candidates[len(top) :]],
    }
    return student, plan, scores, listing, depth

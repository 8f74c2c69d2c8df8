"""Solutions of the MIP as whole models, re-ranked by held-out KL; the baselines.

A solution is assembled from the same sub-blocks its scores were measured with: each
edited layer initialised from the parent's statistics (and its BLD-trained weights,
when BLD ran), so the realised model is exactly the composition the summed score
describes. The depth-pruning baseline drops whole layers by their BI importance
(least important first) until the same budget holds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from minitron.layers import decoder_layers
from minitron.modeling import AttentionConfig, BlockConfig, FFNConfig
from minitron.search.library import Library
from minitron.search.variants import swapped_layer


def assemble(parent: nn.Module, blocks: Sequence[BlockConfig], passes, trained=None) -> nn.Module:
    """A copy of ``parent`` with every layer set to ``blocks`` (parent unchanged)."""
    child = copy.deepcopy(parent)
    layers = decoder_layers(child)
    own = parent.config.block_configs
    for i, block in enumerate(blocks):
        if block != own[i]:
            layers[i] = swapped_layer(parent, i, block, passes, trained)
    child.config.block_configs = list(blocks)
    return child


@dataclass
class Realised:
    """The solutions as records (best realised KL first) and the best model."""

    solutions: list[dict[str, Any]]
    model: nn.Module


def realise(parent, library: Library, found, passes, trained, heldout) -> Realised:
    """Assemble every solution of the MIP, score each as a whole; keep the best model."""
    from minitron.eval.perplexity import perplexity
    from minitron.prune.target import heldout_kl

    solutions, best = [], None
    for rank, choice in enumerate(found):
        blocks = [library.layers[i][v] for i, v in enumerate(choice.variants)]
        child = assemble(parent, blocks, passes, trained)
        realised = heldout_kl(parent, child, heldout)
        entry = {
            "rank_by_summed_score": rank,
            "block_configs": [b.to_dict() for b in blocks],
            "params": int(choice.costs["params"]),
            "memory_bytes": int(choice.costs["memory_bytes"]),
            "runtime_ms": {phase: choice.costs[f"{phase}_ms"] for phase in ("prefill", "decode")}
            if "prefill_ms" in choice.costs
            else None,
            "score": choice.score,
            "realised_kl": realised,
            "realised_perplexity": perplexity(child, heldout),
        }
        solutions.append(entry)
        if best is None or realised < best[0]:
            best = (realised, child)
        else:
            del child
    solutions.sort(key=lambda e: e["realised_kl"])
    return Realised(solutions, best[1])


def depth_baseline(
    parent: nn.Module,
    layer_costs: Sequence[dict[str, int]],
    offsets: dict[str, float],
    limits: dict[str, float],
    calibration: Sequence[torch.Tensor],
    heldout: Sequence[torch.Tensor],
) -> dict[str, Any]:
    """Depth pruning to the same budget: drop the least important layers (BI) until
    every limit holds; the held-out KL and perplexity of that model.

    ``layer_costs[i]`` holds the costs of the parent's layer ``i`` (``params``,
    ``memory_bytes``); ``offsets`` the costs outside the layers.
    """
    from minitron.eval.perplexity import perplexity
    from minitron.importance.blocks import compute_importance
    from minitron.prune.target import heldout_kl

    importance = compute_importance(parent, calibration, "bi").layers
    order = sorted(range(len(importance)), key=lambda i: importance[i])
    dropped: list[int] = []

    def total(name: str) -> float:
        kept = (c[name] for i, c in enumerate(layer_costs) if i not in dropped)
        return offsets.get(name, 0) + sum(kept)

    for layer in order:
        if all(total(name) <= limit for name, limit in limits.items()):
            break
        dropped.append(layer)
    removed = BlockConfig(AttentionConfig(no_op=True), FFNConfig(no_op=True))
    blocks = [removed if i in dropped else b for i, b in enumerate(parent.config.block_configs)]
    child = assemble(parent, blocks, passes=None)
    return {
        "method": "depth pruning: layers dropped by BI importance, least important first",
        "dropped_layers": sorted(dropped),
        "params": int(total("params")),
        "realised_kl": heldout_kl(parent, child, heldout),
        "realised_perplexity": perplexity(child, heldout),
    }

"""Importance metrics against slow references that physically remove or truncate layers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from minitron.errors import MinitronError
from minitron.importance import (
    ImportanceResult,
    compute_importance,
    layer_forward_cost,
)
from tests.conftest import random_batches, tiny_llama

TOL = 1e-5


def without_layers(model, removed):
    """A copy of ``model`` with layers ``removed`` physically taken out."""
    pruned = copy.deepcopy(model)
    kept = [layer for i, layer in enumerate(pruned.model.layers) if i not in removed]
    pruned.model.layers = nn.ModuleList(kept)
    pruned.config.num_hidden_layers = len(kept)
    if getattr(pruned.config, "layer_types", None):  # each kept layer keeps its attention type
        types = pruned.config.layer_types
        pruned.config.layer_types = [t for i, t in enumerate(types) if i not in removed]
    return pruned


def reference_loss(model, batches, removed=()):
    """Mean next-token loss over all predicted tokens of all batches."""
    pruned = without_layers(model, set(removed))
    total = count = 0.0
    with torch.no_grad():
        for ids in batches:
            predicted = ids[:, 1:].numel()
            total += pruned(ids, labels=ids, use_cache=False).loss.item() * predicted
            count += predicted
    return total / count


def reference_state(model, ids, k):
    """The stream entering layer ``k``: the model truncated to ``k`` layers, no final norm."""
    truncated = without_layers(model, set(range(k, model.config.num_hidden_layers)))
    truncated.model.norm = nn.Identity()
    with torch.no_grad():
        return truncated.model(ids).last_hidden_state


def reference_similarity(model, batches, metric, n):
    """Mean per-token BI or angular distance of each block of ``n`` layers."""
    num_layers = model.config.num_hidden_layers
    scores = []
    for start in range(num_layers - n + 1):
        total = count = 0.0
        for ids in batches:
            cos = torch.cosine_similarity(
                reference_state(model, ids, start), reference_state(model, ids, start + n), dim=-1
            )
            per_token = 1 - cos if metric == "bi" else torch.arccos(cos.clamp(-1, 1)) / math.pi
            total += per_token.sum().item()
            count += per_token.numel()
        scores.append(total / count)
    return scores


@pytest.mark.parametrize("metric", ["bi", "angular"])
@pytest.mark.parametrize("block_size", [1, 2, 3])
def test_similarity_metrics_match_truncated_models(model, batches, metric, block_size):
    result = compute_importance(model, batches, metric, block_size)
    assert result.layers == pytest.approx(reference_similarity(model, batches, metric, 1), abs=TOL)
    assert result.blocks == pytest.approx(
        reference_similarity(model, batches, metric, block_size), abs=TOL
    )
    assert len(result.blocks) == 6 - block_size + 1
    # Scores must discriminate, or the comparison above proves little.
    assert max(result.blocks) - min(result.blocks) > 1e-3


@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_loss_metric_matches_physically_removed_layers(model, batches, block_size):
    result = compute_importance(model, batches, "loss", block_size)
    assert result.baseline_loss == pytest.approx(reference_loss(model, batches), abs=TOL)
    singles = [reference_loss(model, batches, [i]) for i in range(6)]
    assert result.layers == pytest.approx(singles, abs=TOL)
    blocks = [
        reference_loss(model, batches, range(s, s + block_size)) for s in range(6 - block_size + 1)
    ]
    assert result.blocks == pytest.approx(blocks, abs=TOL)
    assert max(result.blocks) - min(result.blocks) > 1e-3


# check_plain_head runs the model and its decoder once each on a short probe.
PROBE = 2 * 6


def count_layer_forwards(model):
    counter = {"calls": 0}

    def hook(*_):
        counter["calls"] += 1

    for layer in model.model.layers:
        layer.register_forward_hook(hook)
    return counter


@pytest.mark.parametrize("block_size", [1, 3])
def test_loss_metric_reuses_prefix(model, batches, block_size):
    counter = count_layer_forwards(model)
    compute_importance(model, batches, "loss", block_size)
    cost = layer_forward_cost(6, {1, block_size})
    assert counter["calls"] == cost["reuse"] * len(batches) + PROBE
    assert cost["reuse"] < cost["naive"]


def test_blocks_only_skips_single_layers(model, batches):
    counter = count_layer_forwards(model)
    result = compute_importance(model, batches, "loss", 3, single_layers=False)
    assert counter["calls"] == layer_forward_cost(6, [3])["reuse"] * len(batches) + PROBE
    assert result.layers == [] and result.least_important_layers(3) == []
    full = compute_importance(model, batches, "loss", 3)
    assert result.blocks == full.blocks
    # bi and angular get single layers from the same pass anyway.
    assert len(compute_importance(model, batches, "bi", 3, single_layers=False).layers) == 6


def test_layer_forward_cost_formula():
    # L=32, n=1: 32 + 31*32/2 = 528 with reuse; 32 + 32*31 = 1024 naively.
    assert layer_forward_cost(32, [1]) == {"reuse": 528, "naive": 1024}
    # Sizes share the trace: 32 + 496 + (16*17/2 = 136).
    assert layer_forward_cost(32, [1, 16])["reuse"] == 32 + 496 + 136


def test_similarity_metrics_run_one_forward_per_batch(model, batches):
    counter = count_layer_forwards(model)
    compute_importance(model, batches, "bi", 3)
    assert counter["calls"] == 6 * len(batches)


def test_importance_does_not_change_model(model, batches):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compute_importance(model, batches, "loss", 2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.num_hidden_layers == 6 and len(model.model.layers) == 6


def test_selection_helpers():
    result = ImportanceResult(
        metric="bi",
        num_layers=5,
        block_size=2,
        layers=[0.5, 0.1, 0.4, 0.05, 0.9],
        blocks=[0.6, 0.3, 0.2, 0.7],
    )
    assert result.least_important_block() == 2
    assert result.block(2) == [2, 3]
    assert result.least_important_layers(2) == [1, 3]
    record = result.to_dict()
    assert record["layer_indexing"] == "0-indexed"
    assert ImportanceResult.from_dict(record) == result


@pytest.mark.parametrize("block_size", [0, 6, 7])
def test_block_size_out_of_range(model, batches, block_size):
    with pytest.raises(MinitronError, match="block size must be between 1 and 5"):
        compute_importance(model, batches, "bi", block_size)


def test_unknown_metric(model, batches):
    with pytest.raises(MinitronError, match="unknown metric"):
        compute_importance(model, batches, "winogrande")


def test_scores_follow_batches():
    model = tiny_llama(seed=3)
    one = compute_importance(model, random_batches(count=1, seed=5), "bi")
    other = compute_importance(model, random_batches(count=1, seed=6), "bi")
    assert one.layers != other.layers


def test_loss_metric_with_mixed_attention_types():
    """Sliding and full layers get different masks; each replays with its own."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=98, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
        use_sliding_window=True, sliding_window=3,
        layer_types=["sliding_attention", "full_attention"] * 2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    batches = random_batches(seq_len=12)  # longer than the window, so masks differ
    result = compute_importance(model, batches, "loss", 2)
    singles = [reference_loss(model, batches, [i]) for i in range(4)]
    assert result.layers == pytest.approx(singles, abs=TOL)
    blocks = [reference_loss(model, batches, [s, s + 1]) for s in range(3)]
    assert result.blocks == pytest.approx(blocks, abs=TOL)

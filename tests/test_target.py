"""Prune to a target: parameter counts against transformers' own models, the candidate grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from minitron.commands.prune import PruneConfig, dry_run
from minitron.config import load_recipe
from minitron.errors import MinitronError
from minitron.prune.target import (
    TargetGrid,
    budget_params,
    enumerate_candidates,
    grid_shapes,
    heldout_kl,
    shape_params,
)
from minitron.prune.width import WidthShape, first_k_plan, parent_shape, slice_model
from tests.conftest import random_batches, tiny_llama

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests/fixtures"
LLAMA_8B = FIXTURES / "llama-3.1-8b"  # a folder holding Llama-3.1-8B's config.json


def config_of(name: str):
    path = FIXTURES / "configs" / f"{name}.config.json"
    return AutoConfig.for_model(**json.loads(path.read_text()))


def meta_params(config, layers: int, shape: WidthShape) -> int:
    """Parameters of the model transformers builds after slice_model cuts it (meta device)."""
    with torch.device("meta"):
        parent = AutoModelForCausalLM.from_config(config)
    plan = first_k_plan(config, shape, range(layers))
    return sum(p.numel() for p in slice_model(parent, plan).parameters())


@pytest.mark.parametrize(
    "name, layers, shape",
    [
        ("smollm2-135m", 30, None),
        ("smollm2-135m", 20, WidthShape(448, 1024, 6, 2)),
        ("llama-3.1-70b-instruct", 80, None),
        ("llama-3.1-70b-instruct", 60, WidthShape(6144, 20480, 48, 6)),
    ],
)
def test_shape_params_equals_the_built_model(name, layers, shape):
    config = config_of(name)
    shape = shape or parent_shape(config)
    assert shape_params(config, layers, shape) == meta_params(config, layers, shape)


def test_shape_params_with_biases_equals_the_built_model():
    config = tiny_llama(2, attention_bias=True, mlp_bias=True).config
    shape = WidthShape(16, 32, 2, 1)
    assert shape_params(config, 2, shape) == meta_params(config, 2, shape)


def test_minitron_4b_width_shape_has_the_published_size():
    """4,512,746,496 is computed by hand from the paper's shape (hidden 3072, MLP 9216,
    32 heads, 8 K/V heads of 128, 32 layers, untied 128,256-token head)."""
    config = AutoConfig.from_pretrained(LLAMA_8B)
    by_hand = (
        2 * 128256 * 3072 + 3072
        + 32 * (2 * 3072 + 2 * 3072 * 4096 + 2 * 3072 * 1024 + 3 * 3072 * 9216)
    )  # fmt: skip
    assert by_hand == 4_512_746_496
    assert shape_params(config, 32, WidthShape(3072, 9216, 32, 8)) == by_hand
    assert shape_params(config, 32, parent_shape(config)) == 8_030_261_248


def test_minitron_4b_width_recipe_dry_run():
    recipe = ROOT / "recipes/llama-3.1-8b/minitron-4b-width.yaml"
    config = load_recipe(recipe, PruneConfig, [f"parent={LLAMA_8B}"])
    assert config.data.samples == 1024  # the paper's calibration set
    report = dry_run(config)
    print(f"4B-Width: {report['params_before']:,} -> {report['params_after']:,}")
    assert (report["params_before"], report["params_after"]) == (8_030_261_248, 4_512_746_496)
    assert report["shape_after"] == {
        "hidden_size": 3072, "intermediate_size": 9216,
        "num_attention_heads": 32, "num_key_value_heads": 8,
    }  # fmt: skip
    assert (report["layers_after"], report["head_dim"]) == (32, 128)


def test_target_recipe_dry_run_lists_candidates_for_4_5b():
    recipe = ROOT / "recipes/llama-3.1-8b/target-4.5b.yaml"
    report = dry_run(load_recipe(recipe, PruneConfig, [f"parent={LLAMA_8B}"]))
    candidates = report["candidates"]
    for c in candidates:
        print(c)
    assert report["budget_params"] == 4_500_000_000
    assert len(candidates) == 10 and report["candidates_within_budget"] > 1000
    assert all(c["params"] <= 4.5e9 for c in candidates)
    gaps = [4.5e9 - c["params"] for c in candidates]
    assert gaps == sorted(gaps) and gaps[0] < 5e6
    config = AutoConfig.from_pretrained(LLAMA_8B)
    for c in candidates:  # each count is the model transformers builds
        shape = WidthShape(
            c["hidden_size"], c["intermediate_size"], c["num_attention_heads"],
            c["num_key_value_heads"],
        )  # fmt: skip
        assert c["params"] == meta_params(config, c["layers"], shape)
        assert c["hidden_size"] % 256 == 0 and c["intermediate_size"] % 512 == 0
        assert c["num_attention_heads"] == 4 * c["num_key_value_heads"]  # whole groups
        assert c["hidden_size"] % c["num_attention_heads"] == 0  # transformers requires it


def test_grid_and_budget():
    config = config_of("smollm2-135m")
    grid = TargetGrid(layer_step=5, hidden_step=64, ffn_step=256, min_fraction=0.5)
    shapes = grid_shapes(config, grid)
    assert shapes[0] == (30, parent_shape(config))
    assert {n for n, _ in shapes} == {30, 25, 20, 15}
    # hidden 576, 512, ..., 320, but only sizes the heads divide: 9 heads (3 groups of 3)
    # divide 576; 6 heads (2 groups) divide 576 and 384
    assert {(s.hidden_size, s.num_attention_heads) for _, s in shapes} == {
        (576, 9),
        (576, 6),
        (384, 6),
    }
    budget = budget_params(100e6, None)
    found = enumerate_candidates(config, budget, grid)
    fitting = [(n, s) for n, s in shapes if shape_params(config, n, s) <= budget]
    assert len(found) == len(fitting)
    assert all(found[i].params >= found[i + 1].params for i in range(len(found) - 1))
    assert budget_params(None, 1.0) == 2**29
    with pytest.raises(MinitronError, match="below the smallest candidate"):
        enumerate_candidates(config, 1_000_000, grid)


def test_heldout_kl_is_zero_for_the_parent_and_matches_a_direct_sum():
    parent, student = tiny_llama(3, seed=0), tiny_llama(3, seed=1)
    batches = random_batches()
    assert heldout_kl(parent, parent, batches) == pytest.approx(0, abs=1e-6)
    total = count = 0
    with torch.no_grad():
        for ids in batches:
            p = parent(ids).logits.double().softmax(-1)
            q = student(ids).logits.double().softmax(-1)
            total += (p * (p.log() - q.log())).sum().item()
            count += ids.numel()
    assert heldout_kl(parent, student, batches, chunk=5) == pytest.approx(total / count, rel=1e-4)

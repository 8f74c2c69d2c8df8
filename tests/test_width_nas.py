"""Width pruning of nemotron-nas parents: hidden size and heads across all layers, each
block keeping its own FFN width and K/V heads."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import minitron  # noqa: F401  (registers nemotron-nas with the Auto classes)
from minitron.errors import MinitronError
from minitron.importance.width import width_importance
from minitron.modeling import llama_to_nas
from minitron.prune.width import (
    WidthPlan,
    check_shape,
    first_k_plan,
    plan_width,
    requested_shape,
    slice_model,
)
from tests.conftest import random_batches
from tests.nas_helpers import CONFIGS, block, tiny_nas, tiny_nas_llama

# hidden 64, 8 heads of 8; groups of 2, 1 and 4 query heads (4, 8 and 2 K/V heads), every
# block kind. With 4 heads every block keeps a valid grouping.
BLOCKS = [
    block("no_op", 12),
    block(2, 6),
    block("linear", "linear"),
    block(1, "no_op"),
    block(4, 12),
    block("no_op", "no_op"),
]


def full_permutation_plan(model, seed=0) -> WidthPlan:
    """Every unit kept, each kind in a random order consistent across layers."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    base = first_k_plan(config, requested_shape(config), range(config.num_hidden_layers))

    def shuffle(items):
        return [items[i] for i in torch.randperm(len(items), generator=g).tolist()]

    heads = []
    for row, kv in zip(base.heads, base.kv_heads, strict=True):
        group = len(row) // len(kv) if kv else 0
        heads.append([k * group + h for k in kv for h in shuffle(list(range(group)))])
    return WidthPlan(
        layers=base.layers,
        hidden=shuffle(base.hidden),
        heads=heads,
        kv_heads=base.kv_heads,
        neurons=[shuffle(row) for row in base.neurons],
    )


def test_keeping_everything_gives_the_parents_logits():
    model = tiny_nas(BLOCKS)
    pruned = slice_model(model, full_permutation_plan(model))
    ids = random_batches(count=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    assert pruned.config.block_configs == model.config.block_configs


def test_nas_cut_equals_the_same_cut_of_the_identical_llama():
    """A Llama and its nemotron-nas copy (llama_to_nas), cut by one plan, give the same
    logits: the nas slicing agrees with the Llama slicing tested in test_width.py."""
    llama = tiny_nas_llama(3)
    nas = llama_to_nas(llama)
    scores = width_importance(llama, random_batches())
    assert scores.heads == width_importance(nas, random_batches()).heads
    llama_shape = requested_shape(llama.config, hidden_size=32, num_attention_heads=4)
    nas_shape = requested_shape(nas.config, hidden_size=32)
    assert (llama_shape.num_attention_heads, llama_shape.num_key_value_heads) == (4, 4)
    assert nas_shape.num_attention_heads == 4
    llama_cut = slice_model(llama, plan_width(scores, llama_shape))
    nas_cut = slice_model(nas, plan_width(scores, nas_shape))
    assert [b.attention.n_heads_in_group for b in nas_cut.config.block_configs] == [1, 1, 1]
    ids = random_batches(count=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(nas_cut(ids).logits, llama_cut(ids).logits)


def test_hidden_cut_slices_every_block_kind_and_reloads(tmp_path):
    model = tiny_nas(BLOCKS)
    scores = width_importance(model, random_batches())
    shape = requested_shape(model.config, hidden_size=32)
    check_shape(model.config, shape)
    pruned = slice_model(model, plan_width(scores, shape))
    config = pruned.config
    assert (config.hidden_size, config.num_attention_heads, config.head_dim) == (32, 4, 8)
    widths = [b.ffn.intermediate_size(32) for b in config.block_configs]
    assert widths == [512, 256, None, None, 512, None]  # every FFN keeps its width
    layer = pruned.model.layers[2]
    assert layer.self_attn.linear_attn.weight.shape == (32, 32)
    assert layer.mlp.linear_mlp.weight.shape == (32, 32)
    pruned.save_pretrained(tmp_path / "out")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = random_batches(count=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, pruned(ids).logits)


def test_nas_requests_that_the_format_cannot_hold():
    config = tiny_nas(BLOCKS).config
    with pytest.raises(MinitronError, match="not a multiple of head_dim 8"):
        requested_shape(config, hidden_size=36)
    with pytest.raises(MinitronError, match="own FFN widths and K/V heads"):
        requested_shape(config, intermediate_size=256)
    with pytest.raises(MinitronError, match="changes head_dim 8"):
        check_shape(config, type(requested_shape(config))(32, None, 8, None))
    with pytest.raises(MinitronError, match="layer 1: 3 heads fit neither its 4 K/V heads"):
        check_shape(config, type(requested_shape(config))(24, None, 3, None))


def test_nemotron_51b_hidden_cut_counts_like_the_built_model():
    """From the published config alone, on the meta device; the count is checked
    against the model built from the pruned config by transformers' Auto class."""
    data = json.loads((CONFIGS / "nemotron-51b-instruct.config.json").read_text())
    config = AutoConfig.for_model(**{k: v for k, v in data.items() if k != "auto_map"})
    with torch.device("meta"):
        parent = AutoModelForCausalLM.from_config(config)
    shape = requested_shape(config, hidden_size=6144)
    check_shape(config, shape)
    assert shape.num_attention_heads == 48
    pruned = slice_model(parent, first_k_plan(config, shape, range(config.num_hidden_layers)))
    with torch.device("meta"):
        rebuilt = AutoModelForCausalLM.from_config(pruned.config)
    count = sum(p.numel() for p in pruned.parameters())
    assert count == sum(p.numel() for p in rebuilt.parameters())
    assert count < sum(p.numel() for p in parent.parameters())
    before = [b.ffn.intermediate_size(8192) for b in config.block_configs]
    after = [b.ffn.intermediate_size(6144) for b in pruned.config.block_configs]
    assert before == after


def test_prune_command_cuts_a_nas_checkpoint_in_depth_and_width(tmp_path):
    from minitron.commands.prune import PruneConfig, dry_run, run_prune
    from minitron.config import parse_config
    from tests.nas_helpers import save_tiny_nas

    parent = save_tiny_nas(tmp_path / "nas", BLOCKS)
    recipe = {
        "parent": str(parent), "drop_layers": [5], "hidden_size": 32,
        "data": {"samples": 2, "heldout": 2, "seq_len": 16, "batch_size": 2},
    }  # fmt: skip
    config = parse_config(PruneConfig, recipe)
    plan = dry_run(config)
    record = run_prune(config, tmp_path / "out")
    assert record["params_after"] == plan["params_after"]
    assert record["shape_after"] == {
        "hidden_size": 32, "intermediate_size": None,
        "num_attention_heads": 4, "num_key_value_heads": None,
    }  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.num_hidden_layers == 5 and model.config.hidden_size == 32
    assert sum(p.numel() for p in model.parameters()) == record["params_after"]
    with pytest.raises(MinitronError, match="target searches Llama shapes"):
        dry_run(parse_config(PruneConfig, {"parent": str(parent), "target": {"params": 1e5}}))

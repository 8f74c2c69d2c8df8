"""Depth pruning of nemotron-nas models: every block kind, exact logits, saved checkpoints.

The references are built apart from ``drop_layers``: a nemotron-nas model constructed
directly from the kept layers' block configs with the parent's weights copied in, and
the parent itself with the dropped layers turned into the identity.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from minitron.modeling import BlockConfig, DeciLMForCausalLM
from minitron.prune import drop_layers, layers_removed
from tests.nas_helpers import (
    MIXED,
    blocks_of,
    nas_from_kept,
    save_tiny_nas,
    single_thread,
    tiny_nas,
    token_batches,
)
from tests.test_cli import SMALL_DATA, minitron, write_recipe

one_thread = pytest.fixture(autouse=True)(single_thread)

IDS = token_batches(1, batch=2, seq_len=10, seed=7)[0]
LAYERS = len(MIXED)  # 7: every attention kind and every FFN kind


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def skipping(parent: DeciLMForCausalLM, dropped: list[int]) -> torch.Tensor:
    """Logits of the parent with the ``dropped`` layers returning their input unchanged."""
    handles = [
        parent.model.layers[i].register_forward_hook(lambda _m, args, _out: args[0])
        for i in dropped
    ]
    try:
        return logits(parent)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("dropped", [[1, 3], [0], [5, 6], [0, 2, 4]])
def test_depth_prune_equals_a_nas_model_built_from_the_kept_blocks(dropped):
    parent = tiny_nas()
    pruned = copy.deepcopy(parent)
    kept = drop_layers(pruned, dropped)
    assert kept == [i for i in range(LAYERS) if i not in dropped]
    blocks = pruned.config.block_configs
    assert all(isinstance(b, BlockConfig) for b in blocks)
    assert [b.to_dict() for b in blocks] == blocks_of(kept)
    assert pruned.config.num_hidden_layers == len(kept) == len(pruned.model.layers)
    reference = nas_from_kept(parent, kept)
    want = reference.state_dict()
    got = pruned.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[name], want[name]) for name in want)  # weights copied exactly
    assert torch.equal(logits(pruned), logits(reference))
    assert torch.equal(logits(pruned), skipping(parent, dropped))
    assert not torch.equal(logits(pruned), logits(parent))  # the dropped layers mattered
    attention = [j for j, i in enumerate(kept) if MIXED[i]["attention"].get("n_heads_in_group")]
    assert [pruned.model.layers[j].self_attn.layer_idx for j in attention] == attention
    types = ["full_attention" if j in attention else "moe" for j in range(len(kept))]
    assert pruned.config.layer_types == types


def test_pruned_nas_model_saves_reloads_and_generates(tmp_path):
    model = tiny_nas()
    kept = drop_layers(model, [1, 3])  # keeps no_op, linear, no_op/no_op, g1, g4 attention
    record = model.config.to_dict()
    assert record["num_hidden_layers"] == 5 and record["block_configs"] == blocks_of(kept)
    json.dumps(record)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["block_configs"] == blocks_of(kept) and saved["num_hidden_layers"] == 5
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is DeciLMForCausalLM
    assert torch.equal(logits(loaded), logits(model))
    prompt = IDS[:1, :6]
    uncached = loaded.generate(
        prompt, attention_mask=torch.ones_like(prompt), use_cache=False, max_new_tokens=10,
        do_sample=False, pad_token_id=1, eos_token_id=None,
    )  # fmt: skip
    # Greedy decoding token by token through a cache laid out from the kept blocks.
    cache = DynamicCache(config=loaded.config)
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert kinds == ["DummyLayer"] * 3 + ["DynamicLayer"] * 2
    tokens = prompt
    with torch.no_grad():
        step = prompt
        for _ in range(10):
            out = loaded(step, past_key_values=cache, use_cache=True)
            step = out.logits[:, -1:].argmax(-1)
            tokens = torch.cat([tokens, step], dim=1)
    assert cache.layers[3].keys.shape[1:3] == (8, 15)  # g1: 8 K/V heads, 15 positions
    assert cache.layers[4].keys.shape[1] == 2  # g4: 2 K/V heads
    assert torch.equal(tokens, uncached)


def test_layers_removed_on_a_nas_model_is_the_prune_and_restores_it():
    model = tiny_nas()
    before, config_before = logits(model), model.config.to_dict()
    blocks_before = model.config.block_configs
    with layers_removed(model, [2, 5]) as kept:
        assert kept == [0, 1, 3, 4, 6]
        inside = logits(model)
        assert model.config.to_dict()["block_configs"] == blocks_of(kept)
    reference = tiny_nas()
    drop_layers(reference, [2, 5])
    assert torch.equal(inside, logits(reference))
    assert torch.equal(logits(model), before)
    assert model.config.to_dict() == config_before
    assert model.config.block_configs == blocks_before and len(model.model.layers) == LAYERS
    assert [model.model.layers[i].self_attn.layer_idx for i in (1, 3, 5, 6)] == [1, 3, 5, 6]


def test_block_configs_assigned_as_dicts_are_stored_as_block_configs():
    config = tiny_nas().config
    config.block_configs = MIXED[:3]
    assert all(isinstance(b, BlockConfig) for b in config.block_configs)
    assert isinstance(config.block_configs, tuple)
    assert config.layer_types == ["moe", "full_attention", "moe"]


def test_cli_depth_prune_of_a_nas_checkpoint(tmp_path):
    parent = save_tiny_nas(tmp_path / "nas-parent")
    recipe = write_recipe(tmp_path, f"parent: {parent}\ndrop_layers: [1, 3]\n{SMALL_DATA}")
    plan = minitron("prune", recipe, "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    result = minitron("prune", recipe, "--output", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["kept_layers"] == [0, 2, 4, 5, 6] and record["dropped_layers"] == [1, 3]
    reference = nas_from_kept(tiny_nas(), [0, 2, 4, 5, 6])
    params = sum(p.numel() for p in reference.parameters())
    assert record["params_after"] == json.loads(plan.stdout)["params_after"] == params
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == "nemotron-nas" and saved["architectures"] == ["DeciLMForCausalLM"]
    assert saved["block_configs"] == blocks_of([0, 2, 4, 5, 6])
    child = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(logits(child), logits(reference))
    assert record["perplexity_after"] > 0


@pytest.mark.slow  # 13 lm-eval runs of 6 items in a subprocess: 115 s on the shared machine
def test_cli_task_importance_then_prune_of_a_nas_checkpoint(tmp_path):
    from tests.test_task_importance import write_tiny_task

    parent = save_tiny_nas(tmp_path / "nas-parent")
    tasks = write_tiny_task(tmp_path / "tasks")
    scored = minitron(
        "importance", parent, "--metric", "task:tiny_mc", "--block-size", "3", "--task-limit", "6",
        "--include-path", tasks, "--output", tmp_path / "imp",
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    scores = json.loads((tmp_path / "imp" / "scores.json").read_text())
    assert scores["metric"] == "task:tiny_mc"
    assert len(scores["layers"]) == LAYERS and len(scores["blocks"]) == LAYERS - 2
    assert all(0 <= s <= 1 for s in scores["layers"] + scores["blocks"])
    recipe = write_recipe(
        tmp_path,
        f"parent: {parent}\ntarget_layers: 4\nmetric: task:tiny_mc\n"
        f"scores: {tmp_path / 'imp' / 'scores.json'}\nperplexity: false\n",
    )
    result = minitron("prune", recipe, "--output", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    start = min(range(LAYERS - 2), key=scores["blocks"].__getitem__)
    assert json.loads(result.stdout)["dropped_layers"] == [start, start + 1, start + 2]
    kept = [i for i in range(LAYERS) if i not in (start, start + 1, start + 2)]
    child = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(logits(child), logits(nas_from_kept(tiny_nas(), kept)))

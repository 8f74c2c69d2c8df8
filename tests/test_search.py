"""The Puzzle search's library, costs and MIP, against independent counts and brute force."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from minitron.commands.search import SearchConfig, library_record
from minitron.config import load_recipe, parse_config
from minitron.errors import MinitronError
from minitron.modeling import BlockConfig, DeciLMConfig, nas_config_from_llama
from minitron.nas.params import layer_parameters
from minitron.search.costs import block_cost, non_layer_params
from minitron.search.library import AttentionSpace, FFNSpace, build_library, find_block
from minitron.search.mip import solve
from tests.conftest import tiny_config
from tests.test_cli import assert_user_error, minitron, write_recipe

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests/fixtures/configs"


def config_folder(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text((CONFIGS / f"{name}.config.json").read_text())
    return folder


@pytest.mark.parametrize("bias", [False, True])
def test_block_costs_equal_the_layers_transformers_builds(bias):
    """Every variant's parameter count against the nemotron-nas model built on meta."""
    parent = nas_config_from_llama(
        tiny_config(2, hidden_size=64, intermediate_size=512, num_attention_heads=8,
                    num_key_value_heads=4, attention_bias=bias, mlp_bias=bias)
    )  # fmt: skip
    library = build_library(parent, AttentionSpace((4, 2, 1)), FFNSpace(fractions=(1.0, 0.5)))
    blocks = library.layers[0]
    assert len(blocks) == 5 * 4  # (3 GQA + linear + no_op) x (2 widths + linear + no_op)
    for start in range(0, len(blocks), 2):
        pair = blocks[start : start + 2]
        built = layer_parameters(parent.with_blocks(pair))
        assert built == [block_cost(parent, b, 1, 1).params for b in pair]


def test_mip_equals_brute_force_over_a_budget_sweep():
    rng = random.Random(0)
    layers, variants = 4, 3
    scores = [[rng.random() for _ in range(variants)] for _ in range(layers)]
    costs = [[rng.randint(1, 20) for _ in range(variants)] for _ in range(layers)]
    combos = list(itertools.product(range(variants), repeat=layers))

    def brute(limit, earlier=(), shared=layers - 1):
        ok = [
            c for c in combos
            if 5 + sum(costs[i][v] for i, v in enumerate(c)) <= limit
            and all(sum(a == b for a, b in zip(c, e, strict=True)) <= shared for e in earlier)
        ]  # fmt: skip
        return min(ok, key=lambda c: sum(scores[i][v] for i, v in enumerate(c)), default=None)

    least = 5 + sum(min(row) for row in costs)
    for limit in range(least, 5 + sum(max(row) for row in costs) + 1, 3):
        found, record = solve(scores, {"params": costs}, {"params": limit}, {"params": 5})
        assert tuple(found[0].variants) == brute(limit), limit
        assert found[0].costs["params"] <= limit
        found, _ = solve(scores, {"params": costs}, {"params": limit}, {"params": 5},
                         solutions=3, max_shared=2)  # fmt: skip
        earlier = []
        for choice in found:
            assert tuple(choice.variants) == brute(limit, earlier, shared=2), limit
            earlier.append(tuple(choice.variants))
        assert len(found) == 3 or brute(limit, earlier, shared=2) is None
    assert record.status and record.time_limit == 60.0
    with pytest.raises(
        MinitronError,
        match=f"params budget {least - 1} is infeasible: the smallest choice needs {least}",
    ):
        solve(scores, {"params": costs}, {"params": least - 1}, {"params": 5})
    with pytest.raises(MinitronError, match="unknown constraint 'speed'"):
        solve(scores, {"params": costs}, {"speed": 1})


def test_search_51b_dry_run_holds_the_published_layout(tmp_path):
    """Every layer's published 51B block is in the library; their costs add up to the
    published model's 51,501,015,040 parameters."""
    folder = config_folder(tmp_path, "llama-3.1-70b-instruct")
    recipe = ROOT / "recipes/llama-3.1-70b/search-51b.yaml"
    config = load_recipe(recipe, SearchConfig, [f"parent={folder}"])
    record = library_record(config)
    published = json.loads((CONFIGS / "nemotron-51b-instruct.config.json").read_text())
    blocks = [BlockConfig.from_dict(b) for b in published["block_configs"]]
    total = record["non_layer_params"]
    for layer, block in zip(record["layers"], blocks, strict=True):
        variants = [BlockConfig.from_dict({"attention": v["attention"], "ffn": v["ffn"]})
                    for v in layer["variants"]]  # fmt: skip
        index = find_block(variants, block)
        assert index is not None, (layer["layer"], block.describe())
        total += layer["variants"][index]["params"]
    print(f"51B layout from the search library: {total:,} parameters")
    assert total == 51_501_015_040
    assert record["parent_params"] == 70_553_706_496


def test_nemotron_51b_costs_match_its_built_layers():
    data = json.loads((CONFIGS / "nemotron-51b-instruct.config.json").read_text())
    config = DeciLMConfig(**{k: v for k, v in data.items() if k != "auto_map"})
    costs = [block_cost(config, b, 1, 1).params for b in config.block_configs]
    assert costs == layer_parameters(config)
    assert non_layer_params(config) + sum(costs) == 51_501_015_040


def test_memory_and_kv_costs_by_hand():
    shape = {"hidden_size": 64, "intermediate_size": 512, "num_attention_heads": 8}
    parent = nas_config_from_llama(tiny_config(1, num_key_value_heads=4, **shape))
    block = parent.block_configs[0]  # 4 K/V heads of 8
    cost = block_cost(parent, block, batch=3, seq_len=10, dtype_bytes=2)
    assert cost.kv_bytes_per_token == 2 * 4 * 8 * 2
    assert cost.memory_bytes == cost.params * 2 + 30 * cost.kv_bytes_per_token


@pytest.fixture
def nas_ready(tmp_path):
    """A config-only tiny Llama the format can express: hidden 64, 8 heads, FFN 512."""
    from tests.nas_helpers import tiny_nas_llama

    folder = tmp_path / "tiny-config"
    tiny_nas_llama(2).config.save_pretrained(folder)
    return folder


def test_bad_search_requests(tmp_path, nas_ready):
    tiny_checkpoint = nas_ready
    bad = [
        ("attention: {kv_heads: [3]}", "3 K/V heads do not divide the parent's 8 heads"),
        ("constraints: {speed: 3}", "unknown key 'speed'"),
        ("constraints: {params: 10}", "params budget 10 is infeasible: the smallest choice needs"),
        ("serve_with: nothing", "serve_with must be one of"),
    ]
    for keys, message in bad:
        recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\n{keys}\n")
        with pytest.raises(MinitronError, match=message):
            library_record(load_recipe(recipe, SearchConfig))
    recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\nattention: {{kv_heads: [3]}}\n")
    assert_user_error(minitron("search", recipe, "--dry-run"), "do not divide")
    recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\n")
    assert_user_error(minitron("search", recipe), "runs only with --dry-run so far")
    config = parse_config(SearchConfig, {"parent": str(tiny_checkpoint), "serve_with": "vllm"})
    kinds = {json.dumps(v["attention"]) for v in library_record(config)["layers"][0]["variants"]}
    assert not any('"replace_with_linear": true' in k for k in kinds)  # vLLM: no linear

"""Every recipe parses into the config of the command its header names."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from transformers import LlamaConfig

from minitron.commands.data import PrepareConfig
from minitron.commands.distill import DistillConfig
from minitron.commands.prune import PruneConfig, dry_run
from minitron.commands.search import SearchConfig
from minitron.config import load_recipe
from minitron.io import resolve_model
from minitron.modeling import BlockConfig, nas_config_from_llama
from minitron.nas.engines import check_engine
from minitron.nas.rules import resolve_rules

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
CONFIGS = {
    "prune": PruneConfig,
    "distill": DistillConfig,
    "data prepare": PrepareConfig,
    "search": SearchConfig,
}


def header_command(recipe: Path) -> list[str]:
    """``["minitron", command, recipe path, ...]``; ``data prepare`` counts as one command."""
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# minitron "), f"{recipe} must open with the command that runs it"
    words = shlex.split(first.removeprefix("# "))
    if words[1:3] == ["data", "prepare"]:
        words = [words[0], "data prepare", *words[3:]]
    return words


def test_there_are_recipes():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES}
    assert {
        "llama-3.1-8b/minitron-4b-depth.yaml",
        "smollm2-135m/depth.yaml",
        "llama-3.1-70b/nemotron-51b-blocks.yaml",
        "llama-3.3-70b/nemotron-super-49b-blocks.yaml",
        "smollm2-135m/nas.yaml",
    } <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_recipe_parses_into_its_command_config(recipe):
    command = header_command(recipe)
    assert command[2] == recipe.relative_to(ROOT).as_posix()
    config = load_recipe(recipe, CONFIGS[command[1]])
    assert isinstance(config, CONFIGS[command[1]])
    for spec in input_models(config):
        assert resolve_model(spec).kind in {"embedded", "hub", "local"}


def input_models(config) -> list[str]:
    """The model specs a recipe reads. A distill student under runs/ is the output of
    another recipe and need not exist yet; it must be one of the prune recipes' outputs."""
    if isinstance(config, PrepareConfig):
        return [config.tokenizer]
    if not isinstance(config, DistillConfig):
        return [config.parent]
    if config.student.startswith("runs/") and not (ROOT / config.student).exists():
        outputs = {f"runs/{p.parent.name}/{p.stem}" for p in RECIPES if "prune" in p.read_text()}
        assert config.student in outputs, f"no prune recipe writes {config.student}"
        return [config.teacher]
    return [config.teacher, config.student]


def test_minitron_4b_depth_recipe_matches_the_paper():
    config = load_recipe(ROOT / "recipes/llama-3.1-8b/minitron-4b-depth.yaml", PruneConfig)
    assert config.parent == "meta-llama/Llama-3.1-8B"
    assert config.drop_layers == list(range(15, 31))  # 1-indexed 16..31 in the paper
    assert config.target_layers == 16


def test_distill_recipes_follow_the_paper_and_the_demo():
    paper = load_recipe(ROOT / "recipes/llama-3.1-8b/distill-4b-depth.yaml", DistillConfig)
    assert (paper.teacher, paper.student) == (
        "meta-llama/Llama-3.1-8B",
        "runs/llama-3.1-8b/minitron-4b-depth",
    )
    assert (paper.optim.lr, paper.optim.min_lr, paper.data.seq_len) == (1e-4, 1e-5, 8192)
    assert 40 <= paper.optim.warmup_steps <= 60
    assert (paper.loss.objective, paper.loss.temperature, paper.loss.lm_weight) == ("kd", 1, 0)
    batch = paper.data.batch_size * paper.grad_accum * paper.devices * paper.num_nodes
    assert batch == 1152 and batch * paper.data.seq_len * paper.max_steps == pytest.approx(
        94e9, rel=0.01
    )
    assert (paper.precision, paper.strategy) == ("bf16-mixed", "fsdp")
    demo = load_recipe(ROOT / "recipes/smollm2-135m/distill.yaml", DistillConfig)
    assert (demo.teacher, demo.student) == ("smollm2-135m", "runs/smollm2-135m/depth")
    assert demo.data.source == "stdlib"


def test_smollm2_depth_recipe():
    config = load_recipe(ROOT / "recipes/smollm2-135m/depth.yaml", PruneConfig)
    assert (config.parent, config.target_layers) == ("smollm2-135m", 20)
    assert (config.selection, config.metric) == ("contiguous", "loss")
    assert config.data.source == "stdlib"


# Llama-3.3-70B-Instruct's shapes, as oumi-ai/oumi's configs/recipes/llama3_3/README.md
# lists them (commit bd18cd68): the same as Llama-3.1-70B-Instruct's config.json, so the
# 3.1 fixture stands in for the Super-49B parent in config-only tests.
LLAMA_3_3_70B = {
    "vocab_size": 128256,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
}


def config_folder(tmp_path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(
        (ROOT / f"tests/fixtures/configs/{name}.config.json").read_text()
    )
    return folder


def test_llama_3_3_70b_has_the_shapes_of_3_1_70b():
    llama_3_1 = json.loads(
        (ROOT / "tests/fixtures/configs/llama-3.1-70b-instruct.config.json").read_text()
    )
    assert {key: llama_3_1[key] for key in LLAMA_3_3_70B} == LLAMA_3_3_70B


@pytest.mark.parametrize(
    "recipe, parent, params_after",
    [
        (
            "llama-3.1-70b/nemotron-51b-blocks.yaml",
            "meta-llama/Llama-3.1-70B-Instruct",
            51_501_015_040,
        ),
        (
            "llama-3.3-70b/nemotron-super-49b-blocks.yaml",
            "meta-llama/Llama-3.3-70B-Instruct",
            49_867_145_216,
        ),
    ],
)
def test_70b_block_recipes_size_their_published_models(tmp_path, recipe, parent, params_after):
    path = ROOT / "recipes" / recipe
    config = load_recipe(path, PruneConfig)
    assert config.parent == parent and config.edits_blocks and len(config.block_configs) == 80
    assert "RECONSTRUCTED" in path.read_text() or "51b" not in recipe
    folder = config_folder(tmp_path, "llama-3.1-70b-instruct")
    report = dry_run(load_recipe(path, PruneConfig, [f"parent={folder}"]))
    print(f"{recipe}: {report['params_before']:,} -> {report['params_after']:,}")
    assert (report["params_before"], report["params_after"]) == (70_553_706_496, params_after)


@pytest.mark.parametrize(
    "recipe, published",
    [
        ("llama-3.1-70b/nemotron-51b-blocks.yaml", "nemotron-51b-instruct"),
        ("llama-3.3-70b/nemotron-super-49b-blocks.yaml", "nemotron-super-49b-v1"),
    ],
)
def test_70b_block_recipes_hold_the_published_blocks(recipe, published):
    config = load_recipe(ROOT / "recipes" / recipe, PruneConfig)
    blocks = json.loads((ROOT / f"tests/fixtures/configs/{published}.config.json").read_text())
    expected = [BlockConfig.from_dict(b) for b in blocks["block_configs"]]
    assert [BlockConfig.from_dict(b) for b in config.block_configs] == expected


def test_smollm2_nas_recipe_mixes_the_block_kinds():
    config = load_recipe(ROOT / "recipes/smollm2-135m/nas.yaml", PruneConfig)
    assert config.parent == "smollm2-135m" and config.data.source == "stdlib"
    parent = nas_config_from_llama(
        LlamaConfig.from_dict(
            json.loads((ROOT / "tests/fixtures/configs/smollm2-135m.config.json").read_text())
        )
    )
    blocks = resolve_rules(parent, config.rules)
    kv = [b.attention.n_heads_in_group for b in blocks]
    assert [i for i, g in enumerate(kv) if g == 9] == [8, 10, 12, 14, 16]  # 1 KV head of 3
    assert [i for i, b in enumerate(blocks) if b.attention.no_op] == [21, 23, 25]
    assert [i for i, b in enumerate(blocks) if b.attention.replace_with_linear] == [19]
    widths = [b.ffn.intermediate_size(576) for b in blocks]
    assert widths == [1536] * 6 + [1280] * 20 + [1536] * 4
    check_engine(config.serve_with, parent.with_blocks(blocks))

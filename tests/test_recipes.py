"""Every recipe parses into the config of the command its header names."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from minitron.commands.distill import DistillConfig
from minitron.commands.prune import PruneConfig
from minitron.config import load_recipe
from minitron.io import resolve_model

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
CONFIGS = {"prune": PruneConfig, "distill": DistillConfig}


def header_command(recipe: Path) -> list[str]:
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# minitron "), f"{recipe} must open with the command that runs it"
    return shlex.split(first.removeprefix("# "))


def test_there_are_recipes():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES}
    assert {"llama-3.1-8b/minitron-4b-depth.yaml", "smollm2-135m/depth.yaml"} <= names


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

"""Every recipe parses into the config of the command its header names."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from minitron.commands.prune import PruneConfig
from minitron.config import load_recipe
from minitron.io import resolve_model

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
CONFIGS = {"prune": PruneConfig}


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
    assert resolve_model(config.parent).kind in {"embedded", "hub", "local"}


def test_minitron_4b_depth_recipe_matches_the_paper():
    config = load_recipe(ROOT / "recipes/llama-3.1-8b/minitron-4b-depth.yaml", PruneConfig)
    assert config.parent == "meta-llama/Llama-3.1-8B"
    assert config.drop_layers == list(range(15, 31))  # 1-indexed 16..31 in the paper
    assert config.target_layers == 16


def test_smollm2_depth_recipe():
    config = load_recipe(ROOT / "recipes/smollm2-135m/depth.yaml", PruneConfig)
    assert (config.parent, config.target_layers) == ("smollm2-135m", 20)
    assert (config.selection, config.metric) == ("contiguous", "loss")
    assert config.data.source == "stdlib"

"""Typed configs: strict keys and types, --set overrides."""

from __future__ import annotations

import pytest

from minitron.commands.importance import ImportanceConfig
from minitron.commands.prune import PruneConfig
from minitron.config import DataConfig, apply_overrides, load_recipe, parse_config
from minitron.errors import MinitronError


def test_defaults_and_nested_sections():
    config = parse_config(PruneConfig, {"parent": "p", "target_layers": 3, "data": {"samples": 4}})
    assert config.data == DataConfig(samples=4)
    assert config.selection == "contiguous" and config.metric == "loss"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"parent": "p", "target_layers": 3, "drop_layer": [1]}, "unknown key 'drop_layer'"),
        ({"parent": "p", "target_layers": 3, "data": {"sample": 4}}, "unknown key 'sample'"),
        ({"target_layers": 3}, "missing required key 'parent'"),
        ({"parent": "p", "target_layers": "three"}, "target_layers must be int"),
        ({"parent": "p", "target_layers": True}, "target_layers must be int"),
        ({"parent": "p", "drop_layers": [1, "x"]}, "drop_layers\\[1\\] must be int"),
        (
            {"parent": "p", "target_layers": 3, "metric": "mmlu"},
            "metric must be one of bi, angular, loss",
        ),
        (
            {"parent": "p", "drop_layers": [1], "method": "individual"},
            "either drop_layers or method",
        ),
        ({"parent": "p"}, "give target_layers"),
        ({"parent": "p", "drop_layers": [1, 1]}, "lists a layer twice"),
        ({"parent": "p", "target_layers": 3, "data": {"seq_len": 1}}, "seq_len must be at least 2"),
        ({"parent": "p", "target_layers": 3, "data": 5}, "expected a mapping"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(MinitronError, match=message):
        parse_config(PruneConfig, data, "recipe.yaml")


def test_overrides_parse_yaml_values():
    data = apply_overrides(
        {"parent": "p", "data": {"samples": 8}},
        ["target_layers=20", "data.seq_len=64", "drop_layers=[1, 2]", "scores=null", "parent=a=b"],
    )
    assert data == {
        "parent": "a=b",
        "data": {"samples": 8, "seq_len": 64},
        "target_layers": 20,
        "drop_layers": [1, 2],
        "scores": None,
    }


def test_override_unknown_key_is_rejected(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("parent: p\ntarget_layers: 3\n")
    with pytest.raises(MinitronError, match="unknown key 'nope'"):
        load_recipe(recipe, PruneConfig, ["data.nope=1"])
    with pytest.raises(MinitronError, match="--set expects key=value"):
        load_recipe(recipe, PruneConfig, ["target_layers"])


def test_bad_recipe_files(tmp_path):
    with pytest.raises(MinitronError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml", PruneConfig)
    broken = tmp_path / "broken.yaml"
    broken.write_text("parent: [unclosed\n")
    with pytest.raises(MinitronError, match="not valid YAML"):
        load_recipe(broken, PruneConfig)
    twice = tmp_path / "twice.yaml"
    twice.write_text("parent: a\ntarget_layers: 3\nparent: b\n")
    with pytest.raises(MinitronError, match="key 'parent' given twice at line 3"):
        load_recipe(twice, PruneConfig)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("parent: caf\xe9\n".encode("latin-1"))
    with pytest.raises(MinitronError, match="not UTF-8"):
        load_recipe(latin, PruneConfig)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(MinitronError, match="must be a mapping"):
        load_recipe(listing, PruneConfig)


def test_importance_config_checks_block_size():
    with pytest.raises(MinitronError, match="block_size must be at least 1"):
        parse_config(ImportanceConfig, {"block_size": 0})
    assert parse_config(ImportanceConfig, {}).model == "smollm2-135m"


def test_every_choice_list_error_names_a_wrong_type():
    """metric, nas rule kinds and Literal config fields all say when the type is wrong."""
    from minitron.commands.importance import check_metric
    from minitron.nas.rules import _kind

    with pytest.raises(MinitronError, match=r"\(got 3, an integer where a string is expected\)"):
        check_metric(3)
    with pytest.raises(
        MinitronError, match=r"attention must be one of keep, no_op, linear \(got 4, an"
    ):
        _kind({"attention": 4}, "attention", (), "rules[0]")
    with pytest.raises(MinitronError, match=r"must be one of keep, no_op, linear \(got 'drop'\)$"):
        _kind({"attention": "drop"}, "attention", (), "rules[0]")

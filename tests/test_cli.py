"""The installed ``minitron`` command, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MINITRON = Path(sys.executable).parent / "minitron"


def minitron(*args, cwd=ROOT):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [str(MINITRON), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True
    )


def assert_user_error(result, message):
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def write_recipe(folder: Path, text: str) -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(text)
    return recipe


SMALL_DATA = "data: {samples: 2, heldout: 2, seq_len: 16, batch_size: 2}\n"


def test_missing_model(tmp_path):
    recipe = write_recipe(tmp_path, "parent: ./no-such-model\ntarget_layers: 3\n")
    result = minitron("prune", recipe, "--output", tmp_path / "out")
    assert_user_error(result, "model not found: ./no-such-model")
    assert not (tmp_path / "out").exists()
    assert_user_error(minitron("importance", tmp_path / "nope"), "model not found")


def test_recipe_with_unknown_key(tmp_path, tiny_checkpoint):
    recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\ntarget_layer: 3\n")
    result = minitron("prune", recipe, "--output", tmp_path / "out")
    assert_user_error(result, "unknown key 'target_layer'")
    assert not (tmp_path / "out").exists()


def test_drop_index_out_of_range(tmp_path, tiny_checkpoint):
    recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\ndrop_layers: [2, 6]\n")
    result = minitron("prune", recipe, "--output", tmp_path / "out")
    assert_user_error(result, "drop index 6 out of range: the model has 6 layers (0..5, 0-indexed)")
    assert not (tmp_path / "out").exists()


def test_target_not_below_current_layers(tmp_path, tiny_checkpoint):
    recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\ntarget_layers: 6\n")
    result = minitron("prune", recipe, "--output", tmp_path / "out")
    assert_user_error(result, "target_layers (6) must be below the parent's 6 layers")
    assert not (tmp_path / "out").exists()


def test_output_exists_without_overwrite(tmp_path, tiny_checkpoint):
    recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\ndrop_layers: [1]\n{SMALL_DATA}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(minitron("prune", recipe, "--output", out), "output folder exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = minitron("prune", recipe, "--output", out, "--overwrite", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dropped_layers"] == [1]
    assert (out / "prune.json").is_file() and not (out / "keep.txt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["importance", "--block-size", "x"], "Invalid value for '--block-size'"),
        (["prune", "--no-such-flag", "r.yaml"], "No such option: --no-such-flag"),
        (["prune"], "Missing argument 'recipe'"),
        (["importance", "--device", "tpu:0"], "unknown device 'tpu:0'"),
    ],
)
def test_usage_errors_are_one_line(args, message):
    assert_user_error(minitron(*args), message)


def test_failure_after_loading_leaves_no_output(tmp_path, tiny_checkpoint):
    (tmp_path / "small.txt").write_text("too short")
    recipe = write_recipe(
        tmp_path,
        f"parent: {tiny_checkpoint}\ntarget_layers: 4\ndata: {{source: {tmp_path}/small.txt}}\n",
    )
    result = minitron("prune", recipe, "--output", tmp_path / "runs" / "out")
    assert_user_error(result, "gave 0 sequences")
    assert not (tmp_path / "runs").exists()


def test_bad_set_value(tmp_path, tiny_checkpoint):
    recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\ntarget_layers: 3\n")
    result = minitron("prune", recipe, "--set", "metric=perplexity", "--dry-run")
    assert_user_error(result, "metric must be one of bi, angular, loss")


def test_minitron_4b_depth_dry_run_json():
    result = minitron(
        "prune", "recipes/llama-3.1-8b/minitron-4b-depth.yaml",
        "--set", "parent=tests/fixtures/llama-3.1-8b", "--dry-run", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["params_before"] == 8_030_261_248
    assert report["params_after"] == 4_540_469_248
    assert (report["layers_before"], report["layers_after"]) == (32, 16)
    assert report["dropped_layers"] == list(range(15, 31))
    assert report["kept_layers"] == [*range(15), 31]


def test_dry_run_table_says_zero_indexed():
    result = minitron(
        "prune", "recipes/llama-3.1-8b/minitron-4b-depth.yaml",
        "--set", "parent=tests/fixtures/llama-3.1-8b", "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "0-indexed" in result.stdout
    assert "8,030,261,248 -> 4,540,469,248" in result.stdout
    assert "15-30" in result.stdout and "0-14, 31" in result.stdout


def test_importance_writes_scores_plot_and_table(tmp_path, tiny_checkpoint):
    out = tmp_path / "imp"
    result = minitron(
        "importance", tiny_checkpoint, "--metric", "angular", "--block-size", "2",
        "--samples", "4", "--seq-len", "16", "--output", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "scores.json").read_text())
    assert record["metric"] == "angular" and record["layer_indexing"] == "0-indexed"
    assert len(record["layers"]) == 6 and len(record["blocks"]) == 5
    assert record["data"]["samples"] == 4 and record["data"]["source"] == "stdlib"
    assert (out / "importance.png").read_bytes()[:4] == b"\x89PNG"
    assert "0-indexed" in result.stdout and "least important" in result.stdout


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["prune", "--help"]])
def test_help_and_version(args):
    result = minitron(*args)
    assert result.returncode == 0 and result.stdout

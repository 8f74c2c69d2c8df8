"""``minitron prune`` (width, depth + width, target) and ``importance --metric width``, run
as a user runs them (a subprocess), on a tiny random Llama."""

from __future__ import annotations

import json
import re
from unittest import mock

import pytest
import torch
from transformers import AutoModelForCausalLM

from minitron.commands.prune import PruneConfig, dry_run, run_prune
from minitron.config import load_recipe
from minitron.errors import MinitronError
from minitron.prune.target import shape_params
from minitron.prune.width import WidthShape
from tests.test_cli import SMALL_DATA, assert_user_error, minitron, write_recipe

# The tiny parent: 6 layers, hidden 32, MLP 64, 4 heads over 2 K/V heads, head_dim 8.


def test_depth_and_width_in_one_recipe(tmp_path, tiny_checkpoint):
    recipe = write_recipe(
        tmp_path,
        f"parent: {tiny_checkpoint}\ntarget_layers: 4\nmethod: contiguous\nmetric: bi\n"
        "hidden_size: 24\nintermediate_size: 48\nnum_attention_heads: 2\n" + SMALL_DATA,
    )
    result = minitron("prune", recipe, "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "hidden size" in result.stdout and "32 -> 24" in result.stdout
    record = json.loads((tmp_path / "out/prune.json").read_text())
    assert record["layers_after"] == 4 and len(record["dropped_layers"]) == 2
    assert record["shape_after"] == {
        "hidden_size": 24, "intermediate_size": 48,
        "num_attention_heads": 2, "num_key_value_heads": 2,
    }  # fmt: skip
    assert record["width_plan"]["layers"] == record["kept_layers"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.head_dim == 8 and model.config.hidden_size == 24
    shape = WidthShape(24, 48, 2, 2)
    assert record["params_after"] == shape_params(model.config, 4, shape)
    assert sum(p.numel() for p in model.parameters()) == record["params_after"]
    scores = json.loads((tmp_path / "out/width_scores.json").read_text())
    assert scores["metric"] == "width" and scores["num_layers"] == 4  # scored after the drop
    assert record["perplexity_after"] > 0


def test_dry_run_needs_no_weights(tmp_path, tiny_checkpoint):
    (tiny_checkpoint / "model.safetensors").unlink()
    recipe = write_recipe(
        tmp_path, f"parent: {tiny_checkpoint}\nhidden_size: 16\nintermediate_size: 32\n"
    )
    result = minitron("prune", recipe, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # by hand: embedding + head, final norm; per layer 2 norms, q and o (4 heads of 8),
    # k and v (2 K/V heads of 8), gate, up and down
    per_layer = 2 * 16 + 2 * 16 * 32 + 2 * 16 * 16 + 3 * 16 * 32
    assert report["params_after"] == 98 * 16 * 2 + 16 + 6 * per_layer == 21_776


@pytest.mark.parametrize(
    "keys, message",
    [
        ("hidden_size: 30", "hidden_size 30 is not a multiple of num_attention_heads 4"),
        ("num_attention_heads: 8", "num_attention_heads 8 is more than the parent's 4"),
        ("num_attention_heads: 3", "num_attention_heads 3 does not split evenly"),
        ("target: {params: 1000}", "below the smallest candidate"),
        ("target: {params: 1e6}\nhidden_size: 16", "hidden_size and target both choose the shape"),
        ("hidden_size: 16\nmethod: contiguous", "method and scores choose layers to drop"),
    ],
)
def test_bad_width_requests_are_refused_before_weights_load(
    tmp_path, tiny_checkpoint, keys, message
):
    recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\n{keys}\n" + SMALL_DATA)
    with pytest.raises(MinitronError, match=re.escape(message)):
        dry_run(load_recipe(recipe, PruneConfig))
    with (
        mock.patch("minitron.commands.prune_width.load_model", side_effect=AssertionError),
        pytest.raises(MinitronError, match=re.escape(message)),
    ):
        run_prune(load_recipe(recipe, PruneConfig), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_bad_width_request_is_one_line_and_exit_2(tmp_path, tiny_checkpoint, dry):
    recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\nhidden_size: 30\n" + SMALL_DATA)
    result = minitron(
        "prune", recipe, "--output", tmp_path / "out", *(["--dry-run"] if dry else [])
    )
    assert_user_error(result, "hidden_size 30 is not a multiple of num_attention_heads 4")
    assert not (tmp_path / "out").exists()


def test_target_scores_top_k_and_keeps_the_lowest_kl(tmp_path, tiny_checkpoint):
    parent = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    budget = int(0.7 * sum(p.numel() for p in parent.parameters()))
    recipe = write_recipe(
        tmp_path,
        f"parent: {tiny_checkpoint}\nmetric: bi\n"
        f"target: {{params: {budget}, top_k: 3, layer_step: 1, hidden_step: 8, ffn_step: 16}}\n"
        + SMALL_DATA,
    )
    result = minitron("prune", recipe, "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "best" in result.stdout
    listing = json.loads((tmp_path / "out/candidates.json").read_text())
    scored = [c for c in listing["candidates"] if "kl" in c]
    assert len(scored) == 3 and all(c["params"] <= budget for c in listing["candidates"])
    best = min(scored, key=lambda c: c["kl"])
    assert listing["best"] == best["rank"]
    record = json.loads((tmp_path / "out/prune.json").read_text())
    assert record["params_after"] == best["params"] <= budget
    assert record["dropped_layers"] == best["dropped_layers"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.num_hidden_layers == best["layers"]
    assert model.config.hidden_size == best["hidden_size"]


def test_importance_width_writes_scores_and_plots(tmp_path, tiny_checkpoint):
    out = tmp_path / "scores"
    result = minitron(
        "importance", tiny_checkpoint, "--metric", "width", "--samples", "2", "--seq-len", "16",
        "--output", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "width importance" in result.stdout
    record = json.loads((out / "scores.json").read_text())
    assert len(record["hidden"]) == 32 and len(record["heads"]) == 6
    assert all(len(row) == 64 for row in record["neurons"])
    for kind in ("hidden", "heads", "neurons"):
        assert (out / f"width_{kind}.png").stat().st_size > 1000
    assert torch.tensor(record["hidden"]).min() > 0

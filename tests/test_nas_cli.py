"""``minitron prune`` with block edits, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from minitron.commands.prune import PruneConfig, run_prune
from minitron.config import load_recipe
from tests.conftest import char_tokenizer
from tests.nas_helpers import CONFIGS, published, tiny_nas_llama
from tests.test_cli import ROOT, assert_user_error, minitron, write_recipe

NAS_RECIPE = ROOT / "recipes/smollm2-135m/nas.yaml"


@pytest.fixture
def parent_70b(tmp_path):
    """Llama-3.1-70B-Instruct's config.json alone in a folder (no weights)."""
    folder = tmp_path / "llama-3.1-70b-instruct"
    folder.mkdir()
    shutil.copy(CONFIGS / "llama-3.1-70b-instruct.config.json", folder / "config.json")
    return folder


def test_51b_recipe_dry_run_on_the_70b_config(parent_70b):
    recipe = ROOT / "recipes/llama-3.1-70b/nemotron-51b-blocks.yaml"
    result = minitron("prune", recipe, "--set", f"parent={parent_70b}", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    before, after = report["params_before"], report["params_after"]
    print(f"51B blocks on the 70B config: {before:,} -> {after:,}")
    assert (report["params_before"], report["params_after"]) == (70_553_706_496, 51_501_015_040)
    assert (report["layers_before"], report["layers_after"], report["serve_with"]) == (
        80, 80, "trtllm",
    )  # fmt: skip
    assert len(report["blocks"]) == 80 and report["blocks"][0]["before"] == "attn g8 + ffn 5.25"
    assert sum(b["after"].startswith("attn linear") for b in report["blocks"]) == 18


@pytest.mark.parametrize(
    "recipe",
    ["llama-3.1-70b/nemotron-51b-blocks.yaml", "llama-3.3-70b/nemotron-super-49b-blocks.yaml"],
)
def test_70b_block_recipes_pass_serve_with_llamacpp(parent_70b, recipe):
    """Both keep the 70B parent's untied lm_head, which llama.cpp's deci loader serves."""
    from minitron.commands.prune import dry_run

    overrides = [f"parent={parent_70b}", "serve_with=llamacpp"]
    config = load_recipe(ROOT / "recipes" / recipe, PruneConfig, overrides)
    assert not json.loads((parent_70b / "config.json").read_text())["tie_word_embeddings"]
    assert dry_run(config)["serve_with"] == "llamacpp"


def test_the_table_groups_runs_of_identical_layers(parent_70b):
    from typer.testing import CliRunner

    from minitron.cli import app

    recipe = ROOT / "recipes/llama-3.3-70b/nemotron-super-49b-blocks.yaml"
    args = ["prune", str(recipe), "--set", f"parent={parent_70b}", "--dry-run"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "70,553,706,496 -> 49,867,145,216" in result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    blocks = published("nemotron-super-49b-v1")["block_configs"]
    runs = 1 + sum(a != b for a, b in zip(blocks, blocks[1:], strict=False))
    assert len(rows) == runs < 80  # runs of identical layers are one row each
    assert rows[0].startswith("│ 0 ") and rows[1].startswith("│ 1-"), rows[:2]


def tiny_parent(tmp_path):
    """A config-only folder: every error below is found before weights would load."""
    folder = tmp_path / "tiny"
    tiny_nas_llama(num_layers=6).config.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


GOOD_BLOCK = {"attention": {"n_heads_in_group": 2}, "ffn": {"ffn_mult": 12}}
BAD_GROUP = GOOD_BLOCK | {"attention": {"n_heads_in_group": 3}}


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"rules": [{"layers": "all", "atention": "no_op"}]}, "rules[0]: unknown key 'atention'"),
        ({"block_configs": [GOOD_BLOCK] * 5 + [BAD_GROUP]},
         "block_configs[5]: n_heads_in_group 3 does not divide the parent's 8 attention heads"),
        ({"rules": [{"layers": 2, "attention": "linear"}], "serve_with": "vllm"},
         "serve_with vllm: layer 2 has attention replace_with_linear, which vLLM cannot serve"),
    ],
)  # fmt: skip
def test_bad_block_recipes_are_one_line_errors(tmp_path, recipe, message):
    parent = tiny_parent(tmp_path)
    path = write_recipe(tmp_path, yaml.safe_dump({"parent": str(parent), **recipe}))
    result = minitron("prune", path, "--output", tmp_path / "out")
    assert_user_error(result, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_embedded_nas_recipe_end_to_end(tmp_path):
    """The shipped recipe on SmolLM2-135M (less data), loaded back in a fresh process.

    The prune runs in this process (what the CLI calls; the CLI itself is tested
    above), saving a second interpreter start on a busy 2-core machine.
    """
    out = tmp_path / "nas"
    small = ["data.samples=4", "data.heldout=2", "data.seq_len=128", "data.batch_size=4"]
    run_prune(load_recipe(NAS_RECIPE, PruneConfig, small), out)
    record = json.loads((out / "prune.json").read_text())
    print(
        f"SmolLM2-135M nas recipe: params {record['params_before']:,} -> "
        f"{record['params_after']:,}, held-out perplexity {record['perplexity_before']:.2f} -> "
        f"{record['perplexity_after']:.2f}"
    )
    assert record["kind"] == "prune" and record["parent"] == "smollm2-135m"
    assert record["calibration"]["calibration_tokens"] == 4 * 128
    edits = {(r["attention"]["edit"], r["ffn"]["edit"]) for r in record["layers"]}
    assert {("kv_heads", "resize"), ("no_op", "resize"), ("linear", "resize")} <= edits
    assert ("keep", "keep") in edits
    assert record["layers"][19]["attention"]["init"].startswith("least squares")
    assert record["params_after"] < record["params_before"] == 134_515_008
    script = textwrap.dedent(
        f"""
        import json, math
        import minitron
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from minitron.config import DataConfig
        from minitron.data import load_text_data
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
        tokenizer = AutoTokenizer.from_pretrained({str(out)!r})
        held = load_text_data(DataConfig(samples=4, heldout=2, seq_len=128), tokenizer).heldout
        prompt = tokenizer("def parse(text):", return_tensors="pt").input_ids
        kw = dict(max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        with torch.no_grad():
            loss = model(input_ids=held, labels=held).loss
            cached = model.generate(prompt, use_cache=True, **kw)[0].tolist()
            uncached = model.generate(prompt, use_cache=False, **kw)[0].tolist()
        print(json.dumps({{"cls": type(model).__name__, "dtype": str(model.dtype),
                          "ppl": math.exp(float(loss)), "cached": cached,
                          "uncached": uncached, "prompt": prompt.shape[1]}}))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"fresh process: {loaded}")
    assert loaded["cls"] == "DeciLMForCausalLM" and loaded["dtype"] == "torch.float32"
    assert math.isfinite(loaded["ppl"])
    assert loaded["ppl"] == pytest.approx(record["perplexity_after"], rel=1e-4)
    # Cached generation (what lm-eval's generate_until tasks run) = uncached.
    assert len(loaded["cached"]) == loaded["prompt"] + 24
    assert loaded["cached"] == loaded["uncached"]

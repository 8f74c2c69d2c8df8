"""Integration on the real embedded model, SmolLM2-135M-Instruct (slow: seconds each)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap

import pytest
import torch

from minitron.commands.prune import PruneConfig, dry_run
from minitron.config import DataConfig, load_recipe
from minitron.data import batches, load_text_data
from minitron.importance import compute_importance
from minitron.io import embedded_model_dir, load_model
from minitron.prune import count_parameters
from tests.test_cli import ROOT, minitron

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m")


def test_embedded_model_is_the_real_smollm2(smollm):
    model, tokenizer = smollm
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert count_parameters(model) == 134_515_008  # tied embeddings counted once
    prompt = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt.shape[1] :])


def test_embedded_cache_is_a_safetensors_hf_folder():
    folder = embedded_model_dir("smollm2-135m")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pkl", ".gguf"))}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())


def test_importance_on_real_text(smollm):
    model, tokenizer = smollm
    data = load_text_data(DataConfig(samples=2, heldout=0, seq_len=64), tokenizer)
    loss = compute_importance(model, batches(data.calibration, 2), "loss", 10)
    assert 1.0 < loss.baseline_loss < 5.0  # a trained model on English docstrings
    # Removing the first layer hurts far more than removing a typical one.
    assert loss.layers[0] > statistics.median(loss.layers) + 1.0
    assert all(score > loss.baseline_loss - 0.05 for score in loss.layers)
    bi = compute_importance(model, batches(data.calibration, 2), "bi", 10)
    assert bi.layers[0] == max(bi.layers)
    assert len(bi.blocks) == len(loss.blocks) == 21


def test_prune_recipe_end_to_end_and_stock_transformers_reload(tmp_path):
    out = tmp_path / "smollm2-20l"
    result = minitron(
        "prune", "recipes/smollm2-135m/depth.yaml",
        "--set", "data.samples=2", "--set", "data.heldout=2", "--set", "data.seq_len=64",
        "--output", out, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["layers_before"], record["layers_after"]) == (30, 20)
    dropped = record["dropped_layers"]
    assert dropped == list(range(dropped[0], dropped[0] + 10))
    assert record["perplexity_after"] > record["perplexity_before"] > 1
    # Plain transformers, no minitron import: load, generate with and without cache.
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
        tokenizer = AutoTokenizer.from_pretrained({str(out)!r})
        assert model.config.num_hidden_layers == 20 == len(model.model.layers)
        ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
        kw = dict(max_new_tokens=16, do_sample=False)
        cached = model.generate(ids, use_cache=True, **kw)
        uncached = model.generate(ids, use_cache=False, **kw)
        assert torch.equal(cached, uncached), (cached, uncached)
        assert cached.shape[1] > ids.shape[1]
        assert not any(m.startswith("minitron") for m in sys.modules)
        print("ok")
    """)
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    check = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stderr


def test_dry_run_of_embedded_model_reads_no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("MINITRON_CACHE", str(tmp_path / "cache"))  # nothing converted yet
    config = load_recipe(ROOT / "recipes/smollm2-135m/depth.yaml", PruneConfig)
    report = dry_run(config)
    assert (report["params_before"], report["params_after"]) == (134_515_008, 99_114_048)
    assert (report["layers_before"], report["layers_after"]) == (30, 20)
    assert report["kept_layers"] is None  # chosen by loss once weights are scored
    assert not (tmp_path / "cache").exists()

"""Width pruning and the target search on the real embedded model (slow: a minute)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from minitron.commands.prune import PruneConfig
from minitron.config import load_recipe
from minitron.data import batches, load_text_data
from minitron.eval.perplexity import perplexity
from minitron.importance.width import WidthScores
from minitron.io import load_model
from minitron.prune.width import first_k_plan, plan_width, random_plan, slice_model
from tests.test_cli import ROOT, minitron

pytestmark = pytest.mark.slow

RECIPE = ROOT / "recipes/smollm2-135m/width.yaml"
SMALLER = ["data.samples=16", "data.heldout=8"]


@pytest.fixture(scope="module")
def width_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("width") / "smollm2-width"
    sets = [arg for item in SMALLER for arg in ("--set", item)]
    result = minitron("prune", RECIPE, *sets, "--output", out, "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_activation_importance_beats_random_and_first_channels(width_run):
    out, record = width_run
    assert record["shape_after"] == {
        "hidden_size": 480, "intermediate_size": 1024,
        "num_attention_heads": 6, "num_key_value_heads": 2,
    }  # fmt: skip
    parent, tokenizer = load_model("smollm2-135m", "float32", "cpu")
    config = load_recipe(RECIPE, PruneConfig, SMALLER)
    data = load_text_data(config.data, tokenizer)
    heldout = batches(data.heldout, config.data.batch_size)
    scores = WidthScores.from_dict(json.loads((out / "width_scores.json").read_text()))
    shape = plan_width(scores, _shape(record))
    layers = range(30)
    importance = perplexity(slice_model(parent, shape), heldout)
    assert importance == pytest.approx(record["perplexity_after"], rel=1e-4)
    baselines = {
        "first-k": first_k_plan(parent.config, _shape(record), layers),
        "random (seed 0)": random_plan(
            parent.config, _shape(record), layers, torch.Generator().manual_seed(0)
        ),
        "random (seed 1)": random_plan(
            parent.config, _shape(record), layers, torch.Generator().manual_seed(1)
        ),
    }
    print(f"held-out perplexity: parent {record['perplexity_before']:.2f}")
    for name, plan in baselines.items():
        other = perplexity(slice_model(parent, plan), heldout)
        print(f"activation importance {importance:.2f} vs {name} {other:.2f}")
        assert importance < other


def _shape(record):
    from minitron.prune.width import WidthShape

    return WidthShape(**record["shape_after"])


def test_width_output_loads_in_stock_transformers_and_caches_exactly(width_run):
    out, _ = width_run
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
        tokenizer = AutoTokenizer.from_pretrained({str(out)!r})
        c = model.config
        assert (c.hidden_size, c.intermediate_size, c.head_dim) == (480, 1024, 64), c
        assert (c.num_attention_heads, c.num_key_value_heads) == (6, 2), c
        assert type(model).__name__ == "LlamaForCausalLM"
        ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
        kw = dict(max_new_tokens=16, do_sample=False)
        cached = model.generate(ids, use_cache=True, **kw)
        uncached = model.generate(ids, use_cache=False, **kw)
        assert torch.equal(cached, uncached), (cached, uncached)
        assert cached.shape[1] == ids.shape[1] + 16
        assert not any(m.startswith("minitron") for m in sys.modules)
        print("ok")
    """)
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    check = subprocess.run(
        [sys.executable, "-c", script], cwd=out.parent, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stderr


def test_target_on_the_embedded_model_keeps_the_lowest_kl(tmp_path):
    recipe = tmp_path / "target.yaml"
    recipe.write_text(
        "parent: smollm2-135m\nmetric: bi\n"
        "target: {params: 1.0e8, top_k: 3, layer_step: 2, hidden_step: 64, ffn_step: 128}\n"
        "data: {samples: 8, heldout: 4, seq_len: 128, batch_size: 4}\n"
    )
    out = tmp_path / "out"
    result = minitron("prune", recipe, "--output", out)
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    listing = json.loads((out / "candidates.json").read_text())
    scored = [c for c in listing["candidates"] if "kl" in c]
    assert len(scored) == 3
    for c in scored:
        print(f"candidate {c['rank']}: {c['params']:,} parameters, held-out KL {c['kl']:.4f}")
    best = min(scored, key=lambda c: c["kl"])
    record = json.loads((out / "prune.json").read_text())
    assert listing["best"] == best["rank"]
    assert record["params_after"] == best["params"] <= 100_000_000
    assert all(c["params"] <= 100_000_000 for c in listing["candidates"])
    assert "best" in result.stdout

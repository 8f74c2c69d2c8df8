"""The Puzzle search on the real embedded model against its baselines (slow: minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minitron.commands.search import SearchConfig, run_search
from minitron.config import load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes/smollm2-135m/search.yaml"

# The embedded recipe with a smaller library (each layer: its own attention or none; the
# FFN at full or half width or none) and fewer tokens, so the run takes a few minutes.
SMALL = [
    "attention.kv_heads=[3]", "attention.linear=false", "ffn.fractions=[1.0,0.5]",
    "solutions=1", "data.heldout=2", "bld.tokens=10240",
    "bld.checkpoint_every=100", "dtype=float32",
]  # fmt: skip


@pytest.mark.slow
def test_search_beats_depth_pruning_and_the_search_without_bld(tmp_path):
    """At the same parameter budget, on held-out text: the BLD search's model is closer to
    the parent (KL) and has a lower perplexity than depth pruning by BI and than the same
    search on untrained variants; model/ has exactly the recorded parameter count."""
    from transformers import AutoModelForCausalLM

    config = load_recipe(RECIPE, SearchConfig, SMALL)
    record = run_search(config, tmp_path / "out")
    best = record["solutions"][0]
    depth = record["baselines"]["depth_pruning"]
    plain = record["baselines"]["search_without_bld"]
    print(json.dumps({"search": best, "depth": depth, "no_bld": plain,
                      "parent_perplexity": record["parent_perplexity"]}, indent=1))  # fmt: skip
    for name, row in (("search with BLD", best), ("depth pruning", depth),
                      ("search without BLD", plain)):  # fmt: skip
        print(f"{name}: {row['params']:,} params, KL {row['realised_kl']:.4f}, "
              f"perplexity {row['realised_perplexity']:.2f}")  # fmt: skip
    budget = config.constraints.params
    assert best["params"] <= budget and depth["params"] <= budget and plain["params"] <= budget
    assert best["realised_kl"] < depth["realised_kl"]
    assert best["realised_perplexity"] < depth["realised_perplexity"]
    assert best["realised_kl"] < plain["realised_kl"]
    assert best["realised_perplexity"] < plain["realised_perplexity"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out/model")
    assert sum(p.numel() for p in model.parameters()) == best["params"]
    library = json.loads((tmp_path / "out/library.json").read_text())
    trained = [
        v["bld"]["ffn"] for layer in library["layers"] for v in layer["variants"]
        if v["bld"]["ffn"]
    ]  # fmt: skip
    assert len({json.dumps(t) for t in trained}) == 30  # the half-width FFN of every layer
    worse = [t for t in trained if not t["nmse_trained"] < t["nmse_init"]]
    assert not worse, worse

"""The Puzzle search's library, costs and MIP, against independent counts and brute force."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from pathlib import Path

import pytest

from minitron.commands.prune import PruneConfig
from minitron.commands.search import SearchConfig, library_record
from minitron.config import load_recipe, parse_config
from minitron.errors import MinitronError
from minitron.modeling import BlockConfig, DeciLMConfig, nas_config_from_llama
from minitron.nas.params import layer_parameters
from minitron.search.costs import block_cost, non_layer_params
from minitron.search.library import AttentionSpace, FFNSpace, build_library, find_block
from minitron.search.mip import solve
from tests.conftest import tiny_config
from tests.test_cli import assert_user_error, minitron, write_recipe

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests/fixtures/configs"


def config_folder(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text((CONFIGS / f"{name}.config.json").read_text())
    return folder


@pytest.mark.parametrize("bias", [False, True])
def test_block_costs_equal_the_layers_transformers_builds(bias):
    """Every variant's parameter count against the nemotron-nas model built on meta."""
    parent = nas_config_from_llama(
        tiny_config(2, hidden_size=64, intermediate_size=512, num_attention_heads=8,
                    num_key_value_heads=4, attention_bias=bias, mlp_bias=bias)
    )  # fmt: skip
    library = build_library(parent, AttentionSpace((4, 2, 1)), FFNSpace(fractions=(1.0, 0.5)))
    blocks = library.layers[0]
    assert len(blocks) == 5 * 4  # (3 GQA + linear + no_op) x (2 widths + linear + no_op)
    for start in range(0, len(blocks), 2):
        pair = blocks[start : start + 2]
        built = layer_parameters(parent.with_blocks(pair))
        assert built == [block_cost(parent, b, 1, 1).params for b in pair]


def test_mip_equals_brute_force_over_a_budget_sweep():
    rng = random.Random(0)
    layers, variants = 4, 3
    scores = [[rng.random() for _ in range(variants)] for _ in range(layers)]
    costs = [[rng.randint(1, 20) for _ in range(variants)] for _ in range(layers)]
    combos = list(itertools.product(range(variants), repeat=layers))

    def brute(limit, earlier=(), shared=layers - 1):
        ok = [
            c for c in combos
            if 5 + sum(costs[i][v] for i, v in enumerate(c)) <= limit
            and all(sum(a == b for a, b in zip(c, e, strict=True)) <= shared for e in earlier)
        ]  # fmt: skip
        return min(ok, key=lambda c: sum(scores[i][v] for i, v in enumerate(c)), default=None)

    least = 5 + sum(min(row) for row in costs)
    for limit in range(least, 5 + sum(max(row) for row in costs) + 1, 3):
        found, record = solve(scores, {"params": costs}, {"params": limit}, {"params": 5})
        assert tuple(found[0].variants) == brute(limit), limit
        assert found[0].costs["params"] <= limit
        found, _ = solve(scores, {"params": costs}, {"params": limit}, {"params": 5},
                         solutions=3, max_shared=2)  # fmt: skip
        earlier = []
        for choice in found:
            assert tuple(choice.variants) == brute(limit, earlier, shared=2), limit
            earlier.append(tuple(choice.variants))
        assert len(found) == 3 or brute(limit, earlier, shared=2) is None
    assert record.status and record.time_limit == 60.0
    with pytest.raises(
        MinitronError,
        match=f"params budget {least - 1} is infeasible: the smallest choice needs {least}",
    ):
        solve(scores, {"params": costs}, {"params": least - 1}, {"params": 5})
    with pytest.raises(MinitronError, match="unknown constraint 'speed'"):
        solve(scores, {"params": costs}, {"speed": 1})


def test_search_51b_dry_run_holds_the_published_layout(tmp_path):
    """Every layer's published 51B block is in the library; their costs add up to the
    published model's 51,501,015,040 parameters."""
    folder = config_folder(tmp_path, "llama-3.1-70b-instruct")
    recipe = ROOT / "recipes/llama-3.1-70b/search-51b.yaml"
    config = load_recipe(recipe, SearchConfig, [f"parent={folder}"])
    record = library_record(config)
    published = json.loads((CONFIGS / "nemotron-51b-instruct.config.json").read_text())
    blocks = [BlockConfig.from_dict(b) for b in published["block_configs"]]
    total = record["non_layer_params"]
    for layer, block in zip(record["layers"], blocks, strict=True):
        variants = [BlockConfig.from_dict({"attention": v["attention"], "ffn": v["ffn"]})
                    for v in layer["variants"]]  # fmt: skip
        index = find_block(variants, block)
        assert index is not None, (layer["layer"], block.describe())
        total += layer["variants"][index]["params"]
    print(f"51B layout from the search library: {total:,} parameters")
    assert total == 51_501_015_040
    assert record["parent_params"] == 70_553_706_496


def test_nemotron_51b_costs_match_its_built_layers():
    data = json.loads((CONFIGS / "nemotron-51b-instruct.config.json").read_text())
    config = DeciLMConfig(**{k: v for k, v in data.items() if k != "auto_map"})
    costs = [block_cost(config, b, 1, 1).params for b in config.block_configs]
    assert costs == layer_parameters(config)
    assert non_layer_params(config) + sum(costs) == 51_501_015_040


def test_memory_and_kv_costs_by_hand():
    shape = {"hidden_size": 64, "intermediate_size": 512, "num_attention_heads": 8}
    parent = nas_config_from_llama(tiny_config(1, num_key_value_heads=4, **shape))
    block = parent.block_configs[0]  # 4 K/V heads of 8
    cost = block_cost(parent, block, batch=3, seq_len=10, dtype_bytes=2)
    assert cost.kv_bytes_per_token == 2 * 4 * 8 * 2
    assert cost.memory_bytes == cost.params * 2 + 30 * cost.kv_bytes_per_token


@pytest.fixture
def nas_ready(tmp_path):
    """A config-only tiny Llama the format can express: hidden 64, 8 heads, FFN 512."""
    from tests.nas_helpers import tiny_nas_llama

    folder = tmp_path / "tiny-config"
    tiny_nas_llama(2).config.save_pretrained(folder)
    return folder


def test_bad_search_requests(tmp_path, nas_ready):
    tiny_checkpoint = nas_ready
    bad = [
        ("attention: {kv_heads: [3]}", "3 K/V heads do not divide the parent's 8 heads"),
        ("constraints: {speed: 3}", "unknown key 'speed'"),
        ("constraints: {params: 10}", "params budget 10 is infeasible: the smallest choice needs"),
        ("serve_with: nothing", "serve_with must be one of"),
    ]
    for keys, message in bad:
        recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\n{keys}\n")
        with pytest.raises(MinitronError, match=message):
            library_record(load_recipe(recipe, SearchConfig))
    recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\nattention: {{kv_heads: [3]}}\n")
    assert_user_error(minitron("search", recipe, "--dry-run"), "do not divide")
    config = parse_config(SearchConfig, {"parent": str(tiny_checkpoint), "serve_with": "vllm"})
    with pytest.raises(MinitronError, match="vLLM cannot serve attention linear in any layer; "
                       "set attention.linear: false"):  # fmt: skip
        library_record(config)
    config = parse_config(SearchConfig, {"parent": str(tiny_checkpoint), "serve_with": "llamacpp",
                                         "ffn": {"linear": False, "no_op": False}})  # fmt: skip
    layers = library_record(config)["layers"]  # llama.cpp: attention no_op in layers 1.. only
    assert not any(v["attention"]["no_op"] for v in layers[0]["variants"])
    assert any(v["attention"]["no_op"] for v in layers[1]["variants"])
    recipe = write_recipe(tmp_path, f"parent: {tiny_checkpoint}\nserve_with: llamacpp\n")
    assert_user_error(minitron("search", recipe, "--dry-run"), "llama.cpp cannot serve ffn linear")
    with pytest.raises(MinitronError, match="device cuda:1 names one GPU: use device: cuda"):
        parse_config(SearchConfig, {"parent": str(tiny_checkpoint), "device": "cuda:1",
                                    "devices": 2})  # fmt: skip
    import torch

    from minitron.search.ranks import launch

    if torch.cuda.device_count() < 2:  # Lightning's own refusal, as one line
        with pytest.raises(MinitronError, match=r"cannot run on devices: 2 x num_nodes: 1 \(gpu\)"):
            launch("gpu", 2, 1)


def test_replace_one_block_scores_equal_a_physically_edited_model(monkeypatch):
    """Each score against a slow reference: the whole parent copied, that one layer edited
    by apply_block_configs (its own calibration), full forward, KL by the formula. Also
    with the LM head in chunks of 7 tokens and the parent's log-probabilities recomputed
    per chunk (what a large vocabulary gets)."""
    import copy

    import torch

    from minitron.modeling import llama_to_nas
    from minitron.nas import apply_block_configs
    from minitron.search import scores as scoring
    from tests.conftest import random_batches
    from tests.nas_helpers import tiny_nas_llama

    parent = llama_to_nas(tiny_nas_llama(3)).eval()
    library = build_library(
        parent.config, AttentionSpace((4, 1)), FFNSpace(fractions=(1.0, 0.5), linear=True)
    )
    calibration, heldout = random_batches(), random_batches(seed=5)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    scores = scoring.replace_one_block_scores(parent, library, calibration, heldout)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    monkeypatch.setattr(scoring, "HEAD_CHUNK", 7)
    monkeypatch.setattr(scoring, "PARENT_CACHE_BYTES", 0)
    chunked = scoring.replace_one_block_scores(parent, library, calibration, heldout)
    rng = random.Random(1)
    for layer in range(3):
        for v in rng.sample(range(len(library.layers[layer])), 4):
            blocks = list(parent.config.block_configs)
            blocks[layer] = library.layers[layer][v]
            child = copy.deepcopy(parent)
            apply_block_configs(child, blocks, calibration)
            total = count = 0
            with torch.no_grad():
                for ids in heldout:
                    p = parent(ids).logits[:, :-1].double().log_softmax(-1)
                    q = child(ids).logits[:, :-1].double().log_softmax(-1)
                    total += (p.exp() * (p - q)).sum().item()
                    count += ids[:, 1:].numel()
            assert scores.kl[layer][v] == pytest.approx(total / count, rel=1e-4, abs=1e-6)
            assert chunked.kl[layer][v] == pytest.approx(total / count, rel=1e-4, abs=1e-6)
    assert min(min(row) for row in scores.kl) == 0.0  # the parent's own block
    for got, want in ((chunked.lm_loss, scores.lm_loss), (chunked.agreement, scores.agreement)):
        assert sum(got, []) == pytest.approx(sum(want, []), rel=1e-6)


def test_search_run_on_a_tiny_model_respects_the_budget(tmp_path):
    """Scores -> MIP -> realised solutions; the written model has the recorded size."""
    from transformers import AutoModelForCausalLM

    import minitron  # noqa: F401  (nemotron-nas Auto classes)
    from minitron.commands.search import run_search
    from tests.conftest import char_tokenizer
    from tests.nas_helpers import tiny_nas_llama

    folder = tmp_path / "parent"
    tiny_nas_llama(3).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    config = parse_config(SearchConfig, {
        "parent": str(folder), "attention": {"kv_heads": [4, 1]},
        "ffn": {"fractions": [1.0, 0.5], "linear": False},
        "constraints": {"params": 200_000}, "solutions": 3, "max_shared": 2,
        "data": {"samples": 2, "heldout": 2, "seq_len": 16, "batch_size": 2},
        "bld": {"tokens": 320, "lr": 1e-3}, "compare": True,
    })  # fmt: skip
    result = run_search(config, tmp_path / "out")
    record = json.loads((tmp_path / "out/search.json").read_text())
    best = record["solutions"][0]
    assert best["params"] <= 200_000 and len(record["solutions"]) == 3
    kls = [s["realised_kl"] for s in record["solutions"]]
    assert kls == sorted(kls)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out/model")
    assert sum(p.numel() for p in model.parameters()) == best["params"]
    blocks = [b.to_dict() for b in model.config.block_configs]
    assert blocks == best["block_configs"]
    library = json.loads((tmp_path / "out/library.json").read_text())
    assert all(v["score"] is not None for layer in library["layers"] for v in layer["variants"])
    assert result["solver"]["status"]
    recipe = load_recipe(tmp_path / "out/blocks.yaml", PruneConfig)
    assert recipe.block_configs == best["block_configs"]
    # the saved model is the realised one: its held-out KL is the recorded one
    from minitron.data import batches, load_text_data
    from minitron.io import load_model
    from minitron.prune.target import heldout_kl

    parent, tokenizer = load_model(str(folder), "float32", "cpu")
    heldout = batches(load_text_data(config.data, tokenizer).heldout, 2)
    assert heldout_kl(parent, model.eval(), heldout) == pytest.approx(best["realised_kl"], rel=1e-5)
    assert record["bld"]["steps"] == 10 and record["scores"]["trained"]
    nmse = [v["bld"] for layer in library["layers"] for v in layer["variants"]]
    trained = [h for entry in nmse for h in entry.values() if h is not None]
    assert trained
    assert sum(h["nmse_trained"] for h in trained) < sum(h["nmse_init"] for h in trained)
    assert set(record["baselines"]) == {"search_without_bld", "depth_pruning"}
    assert (tmp_path / "out/frontier.png").stat().st_size > 10_000
    scores = [p["score"] for p in record["frontier"]]  # more budget never scores worse
    assert scores == sorted(scores, reverse=True) and len(scores) == 12
    assert record["frontier"][-1]["score"] == 0.0  # the whole parent fits the largest budget
    depth = record["baselines"]["depth_pruning"]
    assert depth["params"] <= 200_000 and depth["dropped_layers"]
    # --solution K: the finished stages are reused (--resume) and the K-th MIP solution
    # is written; its model is the one realised for it
    third = next(s for s in record["solutions"] if s["rank_by_summed_score"] == 2)
    again = run_search(config, tmp_path / "out", overwrite=True, resume=True, solution=2)
    assert again["written_solution"] == 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out/model")
    assert [b.to_dict() for b in model.config.block_configs] == third["block_configs"]
    assert heldout_kl(parent, model.eval(), heldout) == pytest.approx(
        third["realised_kl"], rel=1e-5
    )
    with pytest.raises(MinitronError, match="--solution 3: the recipe asks for 3"):
        run_search(config, tmp_path / "out", overwrite=True, resume=True, solution=3)


def _tiny_search(tmp_path, **overrides):
    from tests.conftest import char_tokenizer
    from tests.nas_helpers import tiny_nas_llama

    folder = tmp_path / "parent"
    if not folder.exists():
        tiny_nas_llama(3).save_pretrained(folder)
        char_tokenizer().save_pretrained(folder)
    values = {
        "parent": str(folder), "attention": {"kv_heads": [4, 1], "no_op": False},
        "ffn": {"fractions": [1.0, 0.5], "linear": True, "no_op": False},
        "constraints": {"params": 220_000},
        "data": {"samples": 4, "heldout": 2, "seq_len": 16, "batch_size": 2},
        "bld": {"tokens": 8 * 32, "lr": 1e-3, "checkpoint_every": 2},
    } | overrides  # fmt: skip
    return parse_config(SearchConfig, values)


def test_bld_lowers_heldout_nmse_measured_on_the_whole_model(tmp_path):
    """Each trained sub-block's held-out NMSE is lower than its initialisation's, and the
    recorded value equals the NMSE of the layer's output in the whole parent with that
    layer swapped (a full forward, not BLD's own decoupled path)."""
    import copy

    import torch

    from minitron.modeling import llama_to_nas
    from minitron.search.bld import BLDOptions, train_blocks, trainable_variants
    from minitron.search.variants import gather_statistics, swapped_layer
    from tests.conftest import random_batches
    from tests.nas_helpers import tiny_nas_llama

    parent = llama_to_nas(tiny_nas_llama(3)).eval()
    library = build_library(
        parent.config, AttentionSpace((4, 1)), FFNSpace(fractions=(1.0, 0.5), linear=True)
    )
    calibration, heldout = random_batches(40, batch=4, seq_len=16), random_batches(seed=5)
    passes = gather_statistics(parent, library, calibration, 1e-2)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    trained = train_blocks(parent, library, passes, calibration, heldout,
                           BLDOptions(steps=40, lr=3e-3), tmp_path / "bld")  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    kinds = {(r["sub_block"], "linear" in r["key"]) for r in trained.record}
    # per layer: 1 K/V head, linear attention, half-width FFN (a linear FFN is solved exactly)
    assert len(trained.record) == len(trainable_variants(library)) == 3 * 3 and len(kinds) == 3
    for entry, variant in zip(trained.record, trainable_variants(library), strict=True):
        # a sub-block that ends worse on held-out tokens keeps its initial weights
        assert entry["kept"] == ("trained" if entry["nmse_trained"] < entry["nmse_init"]
                                 else "initial")  # fmt: skip
        kept = entry["nmse_trained"] if entry["kept"] == "trained" else entry["nmse_init"]
        if entry["key"].endswith("attention_linear") and variant.layer > 0:
            # A least-squares fit of the attention output is already close to BLD's optimum
            # (only the frozen FFN after it differs), so training moves it very little.
            assert entry["nmse_trained"] < entry["nmse_init"] * 1.005, entry["key"]
        else:
            assert entry["nmse_trained"] < entry["nmse_init"] * 0.98, entry["key"]
        child = copy.deepcopy(parent)
        layer = variant.layer
        block = variant.block(parent.config.block_configs[layer])
        child.model.layers[layer] = swapped_layer(parent, layer, block, passes, trained)
        err = norm = 0.0
        with torch.no_grad():
            for ids in heldout:
                want, got = _layer_output(parent, layer, ids), _layer_output(child, layer, ids)
                err += (got - want).pow(2).sum().item()
                norm += want.pow(2).sum().item()
        assert kept == pytest.approx(err / norm, rel=1e-4), entry["key"]


def _layer_output(model, layer, ids):
    """What decoder layer ``layer`` returns in a full forward (caught by a hook)."""
    seen = []
    hook = model.model.layers[layer].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        model(ids)
    finally:
        hook.remove()
    return seen[0][0] if isinstance(seen[0], tuple) else seen[0]


def test_a_search_killed_during_bld_resumes_to_the_same_library(tmp_path, monkeypatch):
    from minitron.commands.search import run_search
    from minitron.search import bld

    config = _tiny_search(tmp_path)
    run_search(config, tmp_path / "whole")
    step = bld.BLDModule.training_step

    def crash(self, batch, batch_idx):
        if self.global_step == 5:
            raise RuntimeError("killed")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(bld.BLDModule, "training_step", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_search(config, tmp_path / "cut")
    assert not (tmp_path / "cut").exists()
    checkpoints = tmp_path / "cut.work/bld/checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-000004.ckpt"
    with pytest.raises(MinitronError, match="--resume"):
        run_search(config, tmp_path / "cut")
    changed = _tiny_search(tmp_path, bld={"tokens": 512, "lr": 1e-3, "checkpoint_every": 2})
    with pytest.raises(MinitronError, match="recipe differs.*bld"):
        run_search(changed, tmp_path / "cut", resume=True)
    monkeypatch.setattr(bld.BLDModule, "training_step", step)
    run_search(config, tmp_path / "cut", resume=True)
    whole = json.loads((tmp_path / "whole/library.json").read_text())
    resumed = json.loads((tmp_path / "cut/library.json").read_text())
    assert resumed == whole
    assert any(v["bld"]["ffn"] for layer in whole["layers"] for v in layer["variants"])
    with pytest.raises(MinitronError, match="nothing to resume"):
        run_search(config, tmp_path / "never", resume=True)
    # the parent changed under a run: its layers no longer match the run's library
    import shutil

    from tests.nas_helpers import tiny_nas_llama

    with pytest.raises(RuntimeError, match="killed"):
        monkeypatch.setattr(bld.BLDModule, "training_step", crash)
        run_search(config, tmp_path / "again")
    shutil.rmtree(tmp_path / "parent")
    tiny_nas_llama(4).save_pretrained(tmp_path / "parent")
    (tmp_path / "whole/model/tokenizer.json").rename(tmp_path / "parent/tokenizer.json")
    with pytest.raises(MinitronError, match="the parent's layers differ"):
        run_search(config, tmp_path / "again", resume=True)


def test_analytic_runtimes_by_hand():
    """The roofline of one layer and of the LM head, against numbers worked out by hand."""
    from minitron.modeling import AttentionConfig, FFNConfig
    from minitron.search.runtime import Peaks, block_runtime_ms, head_runtime_ms

    # hidden 64, 8 heads of 8, FFN 512: GQA with 2 K/V heads = 64 + 2*64*64 + 2*64*16
    # = 10,304 params; FFN = 64 + 3*64*512 = 98,368; layer 108,672 parameters.
    parent = nas_config_from_llama(
        tiny_config(2, hidden_size=64, intermediate_size=512, num_attention_heads=8,
                    num_key_value_heads=2)
    )  # fmt: skip
    block = parent.block_configs[0]
    peaks = Peaks(tflops=1.0, bandwidth_gbs=1.0)  # 1e12 FLOP/s, 1e9 B/s
    got = block_runtime_ms(parent, block, batch=2, seq_len=100, size=2, peaks=peaks)
    # prefill: FLOPs 2*108672*200 + 2*2*64*100*100 = 43,468,800 + 2,560,000 = 46,028,800
    # bytes 217,344 (weights) + 200*64 (cache: 2*2*8*2 B/token) + 2*200*64*2 = 281,344
    # compute 46.0288 us < memory 281.344 us -> 0.281344 ms
    assert got["prefill"] == pytest.approx(0.281344)
    # decode: bytes 217,344 + 12,800 + 2*2*64*2 = 230,656 -> 0.230656 ms
    assert got["decode"] == pytest.approx(0.230656)
    gone = BlockConfig(AttentionConfig(no_op=True), FFNConfig(no_op=True))
    # nothing but the residual stream: 2*200*64*2 bytes
    assert block_runtime_ms(parent, gone, 2, 100, 2, peaks)["prefill"] == pytest.approx(0.0512)
    fast = Peaks(tflops=1e-3, bandwidth_gbs=1e6)  # compute-bound: 1e9 FLOP/s
    assert block_runtime_ms(parent, block, 2, 100, 2, fast)["prefill"] == pytest.approx(46.0288)
    # LM head: 98 x 64 weights, 2 positions: 2*6272*2 FLOPs, 12,544 bytes
    assert head_runtime_ms(parent, 2, 2, peaks) == pytest.approx(0.012544)


def test_throughput_and_latency_budgets(tmp_path, nas_ready):
    base = f"parent: {nas_ready}\nbatch: 2\nseq_len: 100\nruntime: {{method: analytic}}\n"
    record = library_record(load_recipe(write_recipe(tmp_path, base), SearchConfig))
    fastest = record["smallest"]["prefill_ms"]
    best = 1000 * 2 * 100 / fastest
    recipe = write_recipe(tmp_path, base + f"constraints: {{throughput: {best * 1.01}}}\n")
    with pytest.raises(MinitronError, match=re.escape(f"the fastest choice reaches {best:,.6g}")):
        library_record(load_recipe(recipe, SearchConfig))
    recipe = write_recipe(tmp_path, base + "constraints: {latency_ms: 1.0e-9}\n")
    with pytest.raises(MinitronError, match="latency_ms budget 1e-09 is infeasible"):
        library_record(load_recipe(recipe, SearchConfig))
    recipe = write_recipe(tmp_path, f"parent: {nas_ready}\nconstraints: {{latency_ms: 3}}\n")
    with pytest.raises(MinitronError, match="needs runtime costs: set runtime.method: analytic"):
        load_recipe(recipe, SearchConfig)
    recipe = write_recipe(tmp_path, base.replace("analytic}", "analytic, hardware: tpu}"))
    with pytest.raises(MinitronError, match="runtime.hardware must be one of"):
        library_record(load_recipe(recipe, SearchConfig))
    # the MIP keeps the summed prefill time under batch*seq_len / throughput
    from minitron.commands.search import budgets
    from minitron.search.mip import solve

    half = write_recipe(tmp_path, base + f"constraints: {{throughput: {best / 2}}}\n")
    config = load_recipe(half, SearchConfig)
    costs, offsets, limits = budgets(config, record)
    assert limits == {"prefill_ms": pytest.approx(2 * fastest)}
    scores = [[float(len(row) - v) for v in range(len(row))] for row in costs["prefill_ms"]]
    found, _ = solve(scores, costs, limits, offsets)
    assert found[0].costs["prefill_ms"] <= 2 * fastest


def test_bld_in_groups_trains_the_same_sub_blocks(tmp_path):
    """Variants are independent: training them in 3 groups of layers, one after another,
    gives the weights (and records) of training them all at once."""
    import torch

    from minitron.modeling import llama_to_nas
    from minitron.search.bld import BLDOptions, train_blocks
    from minitron.search.variants import gather_statistics
    from tests.conftest import random_batches
    from tests.nas_helpers import tiny_nas_llama

    parent = llama_to_nas(tiny_nas_llama(3)).eval()
    library = build_library(parent.config, AttentionSpace((4, 1)), FFNSpace(fractions=(1.0, 0.5)))
    calibration, heldout = random_batches(4), random_batches(seed=5)
    passes = gather_statistics(parent, library, calibration, 1e-2)
    options = BLDOptions(steps=6, lr=3e-3)
    whole = train_blocks(parent, library, passes, calibration, heldout, options, tmp_path / "a")
    parts = train_blocks(parent, library, passes, calibration, heldout, options, tmp_path / "b",
                         groups=3)  # fmt: skip
    assert sorted(parts.weights) == sorted(whole.weights)
    for key, state in whole.weights.items():
        for name, value in state.items():
            torch.testing.assert_close(parts.weights[key][name], value, rtol=1e-5, atol=1e-6)
    assert sorted(p["key"] for p in parts.record) == sorted(w["key"] for w in whole.record)
    assert all((tmp_path / "b" / f"group-{g}" / "bld.json").is_file() for g in range(3))


def test_measured_runtimes_time_blocks_on_this_device():
    import torch

    from minitron.modeling import AttentionConfig, FFNConfig
    from minitron.search.measure import EMPTY, measure_runtimes

    parent = nas_config_from_llama(
        tiny_config(2, hidden_size=256, intermediate_size=1024, num_attention_heads=8,
                    num_key_value_heads=4, max_position_embeddings=512)
    )  # fmt: skip
    full = parent.block_configs[0]
    half = BlockConfig(AttentionConfig(no_op=True), FFNConfig(ffn_mult=full.ffn.ffn_mult / 4))
    times, outside = measure_runtimes(parent, [full, half, EMPTY, full], 2, 256,
                                      torch.float32, torch.device("cpu"), repeats=3)  # fmt: skip
    assert times[0] is times[3]  # timed once per distinct block
    for phase in ("prefill", "decode"):
        assert outside[phase] > 0
        assert times[0][phase] > times[2][phase] >= 0 and times[1][phase] >= 0
    # (how the variants compare is a speed figure: benchmarks/, not a timed test)


def test_search_with_measured_runtimes_and_a_latency_budget(tmp_path):
    from minitron.commands.search import run_search

    config = _tiny_search(tmp_path, bld={"enabled": False},
                          runtime={"method": "measured", "repeats": 2, "copies": 2},
                          constraints={"latency_ms": 1000.0})  # fmt: skip
    dry = library_record(config)
    assert dry["layers"][0]["variants"][0]["runtime_ms"] is None  # not measured in a dry run
    record = run_search(config, tmp_path / "out")
    library = json.loads((tmp_path / "out/library.json").read_text())
    assert all(v["runtime_ms"]["prefill"] >= 0 for v in library["layers"][0]["variants"])
    best = record["solutions"][0]
    assert best["runtime_ms"]["decode"] <= 1000.0
    with pytest.raises(MinitronError, match="latency_ms budget 1e-06 is infeasible"):
        run_search(_tiny_search(tmp_path, bld={"enabled": False},
                                runtime={"method": "measured", "repeats": 1, "copies": 1},
                                constraints={"latency_ms": 1e-6}), tmp_path / "bad")  # fmt: skip
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.work").exists()


def test_bld_of_a_bf16_parent_trains_fp32_masters_and_scores_in_bf16(tmp_path):
    """A bf16 parent trains under bf16-mixed with fp32 sub-block weights; the trained
    sub-blocks are measured and scored in the parent's dtype."""
    import torch

    from minitron.modeling import llama_to_nas
    from minitron.search.bld import BLDOptions, train_blocks
    from minitron.search.scores import replace_one_block_scores
    from minitron.search.variants import gather_statistics
    from tests.conftest import random_batches
    from tests.nas_helpers import tiny_nas_llama

    parent = llama_to_nas(tiny_nas_llama(2)).eval().to(torch.bfloat16)
    library = build_library(parent.config, AttentionSpace((4, 1)), FFNSpace(fractions=(1.0, 0.5)))
    calibration, heldout = random_batches(2), random_batches(seed=5)
    passes = gather_statistics(parent, library, calibration, 1e-2)
    trained = train_blocks(parent, library, passes, calibration, heldout,
                           BLDOptions(steps=2, lr=1e-3), tmp_path)  # fmt: skip
    values = [v for state in trained.weights.values() for v in state.values()]
    assert values and all(v.dtype == torch.float32 for v in values)
    scores = replace_one_block_scores(parent, library, None, heldout, passes=passes,
                                      trained=trained)  # fmt: skip
    assert all(math.isfinite(k) for row in scores.kl for k in row)


def test_a_search_process_killed_during_bld_resumes_to_the_same_library(tmp_path):
    """SIGKILL of a real `minitron search` process once BLD has checkpointed, then
    `--resume`: the same library.json as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from minitron.commands.search import run_search

    config = _tiny_search(tmp_path, bld={"tokens": 32 * 200, "lr": 1e-3, "checkpoint_every": 2})
    recipe = tmp_path / "search.yaml"
    from minitron.config import config_to_dict

    recipe.write_text(yaml.safe_dump(config_to_dict(config)))
    run_search(load_recipe(recipe, SearchConfig), tmp_path / "whole")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "minitron", "search", str(recipe), "--output"]
    process = subprocess.Popen([*command, str(tmp_path / "cut")], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    latest = tmp_path / "cut.work/bld/checkpoints/latest"
    deadline = time.monotonic() + 120
    while not latest.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert latest.is_file() and not (tmp_path / "cut").exists()
    assert not (tmp_path / "cut.work/bld/bld.json").exists()  # killed inside BLD
    done = subprocess.run([*command, str(tmp_path / "cut"), "--resume"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    whole = json.loads((tmp_path / "whole/library.json").read_text())
    assert json.loads((tmp_path / "cut/library.json").read_text()) == whole


def test_search_on_two_processes_scores_what_one_process_scores(tmp_path):
    """`devices: 2` on CPU (two processes, gloo): BLD trains data-parallel with the token
    budget split across the ranks, and the replace-1-block scores the ranks add up from
    their halves of the held-out batches equal one process scoring all of them with the
    same trained sub-blocks."""
    import os
    import subprocess
    import sys

    import yaml

    from minitron.commands.search import plan_library
    from minitron.config import config_to_dict
    from minitron.data import batches, load_text_data
    from minitron.io import load_model
    from minitron.search.bld import TrainedBlocks
    from minitron.search.scores import replace_one_block_scores
    from minitron.search.stages import load_scores
    from minitron.search.variants import gather_statistics

    config = _tiny_search(tmp_path, data={"samples": 4, "heldout": 4, "seq_len": 16,
                                          "batch_size": 1})  # fmt: skip
    recipe = tmp_path / "search.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(config)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def on_two_processes(output):
        return subprocess.run(
            [sys.executable, "-m", "minitron", "search", str(recipe), "--output",
             str(tmp_path / output), "--set", "devices=2"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    done = on_two_processes("two")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "two/search.json").read_text())
    tokens = config.bld.tokens
    assert record["bld"]["processes"] == 2
    assert record["bld"]["steps"] == math.ceil(tokens / (2 * 16))
    assert record["bld"]["tokens_per_variant"] >= tokens
    parent, tokenizer = load_model(config.parent, "float32", "cpu")
    from minitron.modeling import llama_to_nas

    parent = llama_to_nas(parent).eval()
    data = load_text_data(config.data, tokenizer)
    heldout = batches(data.heldout, 1)
    _, library = plan_library(config)
    passes = gather_statistics(parent, library, batches(data.calibration, 1), config.ridge)
    trained = TrainedBlocks.load(tmp_path / "two.work/bld")
    one = replace_one_block_scores(parent, library, None, heldout, passes=passes,
                                   trained=trained)  # fmt: skip
    two = load_scores(tmp_path / "two.work/scores.json")
    assert two.tokens == one.tokens == 4 * 15
    for got, want in ((two.kl, one.kl), (two.lm_loss, one.lm_loss),
                      (two.agreement, one.agreement)):  # fmt: skip
        flat = [x for row in want for x in row]
        assert [x for row in got for x in row] == pytest.approx(flat, rel=1e-5, abs=1e-7)
    for entry in trained.record:  # trained on both ranks' batches, better than the start
        if "attention_linear" not in entry["key"]:
            assert entry["nmse_trained"] < entry["nmse_init"], entry["key"]
    # rank 0 refuses an earlier run's stages: one line, exit 2, and rank 1 does not hang
    (tmp_path / "other.work").mkdir()
    (tmp_path / "other.work/run.json").write_text("{}")
    refused = on_two_processes("other")
    assert refused.returncode == 2, refused.stderr[-2000:]
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "holds an earlier run" in lines[0], refused.stderr[-2000:]
    assert not (tmp_path / "other").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_search_with_bld_on_cuda(tmp_path):
    """BLD, scores and realising on a GPU (Lightning moves its module to the CPU when
    fit ends; the trained sub-blocks must come back to the parent's device)."""
    from minitron.commands.search import run_search

    config = _tiny_search(tmp_path, device="cuda", dtype="bfloat16", compare=True)
    record = run_search(config, tmp_path / "out")
    assert record["bld"]["steps"] > 0 and record["scores"]["trained"]
    assert all(math.isfinite(s["realised_kl"]) for s in record["solutions"])


@pytest.mark.gpu
@pytest.mark.skipif(__import__("torch").cuda.device_count() < 2, reason="needs two CUDA devices")
def test_search_on_two_gpus(tmp_path):
    """`devices: 2` on two GPUs (NCCL): BLD under DDP, the scores split, rank 0 writes."""
    import os
    import subprocess
    import sys

    import yaml

    from minitron.config import config_to_dict

    data = {"samples": 4, "heldout": 4, "seq_len": 16, "batch_size": 1}
    config = _tiny_search(tmp_path, device="cuda", dtype="bfloat16", data=data)
    recipe = tmp_path / "search.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(config)))
    done = subprocess.run(
        [sys.executable, "-m", "minitron", "search", str(recipe), "--output",
         str(tmp_path / "two"), "--set", "devices=2"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=tmp_path, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "two/search.json").read_text())
    assert record["bld"]["processes"] == 2 and record["scores"]["tokens"] == 4 * 15

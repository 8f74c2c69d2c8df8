"""Calibration memory of block edits: passes under a budget, accumulators on the CPU.

Each fitted sub-block of the tiny models (hidden 64) holds XᵀX and XᵀY in float64,
2 · 64² · 8 = 65,536 bytes; a resized FFN of width 512 holds 512 · 8 = 4,096 bytes.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from minitron.commands.prune import PruneConfig, dry_run, run_prune
from minitron.config import DataConfig, load_recipe, parse_config
from minitron.errors import MinitronError
from minitron.modeling import llama_to_nas
from minitron.nas import (
    CalibrationMemory,
    apply_block_configs,
    collect_statistics,
    plan_calibration,
    plan_edits,
)
from minitron.nas.calibrate import RIDGE
from tests.conftest import char_tokenizer
from tests.nas_helpers import block, single_thread, tiny_nas_llama, token_batches
from tests.test_cli import ROOT
from tests.test_nas_cli import parent_70b  # noqa: F401  (a fixture)
from tests.test_nas_edits import numpy_fit

one_thread = pytest.fixture(autouse=True)(single_thread)

FIT, CHANNELS = 2 * 64 * 64 * 8, 512 * 8  # bytes of one linear fit, of one FFN's channel sums
# Statistics in layer order: channels 0, fit 1 (attention), fit 2 (FFN), fits 3 (both).
PLAN = [block(4, 6.0), block("linear", 12), block("no_op", "linear"), block("linear", "linear")]
GIB = 2**30


def edits_of(plan=PLAN, layers: int = 4):
    config = llama_to_nas(tiny_nas_llama(num_layers=layers)).config
    return config, plan_edits(config, plan)


@pytest.mark.parametrize(
    ("budget", "groups"),
    [
        (None, [[0, 1, 2, 3]]),
        (CHANNELS + 4 * FIT, [[0, 1, 2, 3]]),
        (CHANNELS + 4 * FIT - 1, [[0, 1, 2, 3], [3]]),  # layer 3's FFN fit starts a pass
        (CHANNELS + FIT, [[0, 1], [2], [3], [3]]),
        (2 * FIT, [[0, 1], [2, 3], [3]]),
        (FIT, [[0], [1], [2], [3], [3]]),
    ],
)  # fmt: skip
def test_statistics_are_packed_in_layer_order_under_the_budget(budget, groups):
    config, edits = edits_of()
    plan = plan_calibration(config, edits, CalibrationMemory("cpu", budget))
    record = plan.to_dict()
    assert [g["layers"] for g in record["groups"]] == groups
    assert record["passes"] == len(groups)
    sizes = [sum(s.nbytes for s in g) for g in plan.groups]
    assert [g["bytes"] for g in record["groups"]] == sizes
    assert sum(sizes) == CHANNELS + 4 * FIT  # every statistic once
    assert record["peak_bytes"] == max(sizes) <= (budget or max(sizes))


def test_a_budget_below_one_accumulator_is_one_error():
    config, edits = edits_of()
    with pytest.raises(MinitronError, match="too small: the linear statistic of layer 1 "):
        plan_calibration(config, edits, CalibrationMemory("cpu", FIT - 1))
    with pytest.raises(MinitronError, match="calibration_budget_gib must be above 0"):
        PruneConfig(parent="p", block_configs=PLAN, calibration_budget_gib=0)
    with pytest.raises(MinitronError, match="accumulate_on"):
        parse_config(PruneConfig, {"parent": "p", "block_configs": PLAN, "accumulate_on": "gpu"})


@pytest.mark.parametrize(
    ("accumulate_on", "budget", "passes"),
    [("cpu", None, 1), ("cpu", FIT, 5), ("device", CHANNELS + FIT, 4), ("cpu", 2 * FIT, 3)],
)
def test_passes_and_placements_give_the_one_pass_fit_exactly(accumulate_on, budget, passes):
    llama = tiny_nas_llama()
    calib, ids = token_batches(4, seq_len=24, seed=5), token_batches(1, seed=6)[0]
    one_pass = llama_to_nas(copy.deepcopy(llama))  # the former behaviour
    expected = apply_block_configs(one_pass, PLAN, calib, memory=CalibrationMemory("device"))
    edited = llama_to_nas(copy.deepcopy(llama))
    edits = plan_edits(edited.config, PLAN)
    memory = CalibrationMemory(accumulate_on, budget)
    calibration = collect_statistics(edited, edits, calib, RIDGE, memory)
    assert calibration.record["passes"] == passes
    records = apply_block_configs(edited, PLAN, calib, memory=memory)
    assert records == expected
    want, got = one_pass.state_dict(), edited.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    with torch.no_grad():
        assert torch.equal(edited(ids).logits, one_pass(ids).logits)
    # And the fits are least squares, by numpy on the parent's own activations.
    reference = numpy_fit(llama, 3, "attention", calib, RIDGE)
    weight = got["model.layers.3.self_attn.linear_attn.weight"].double().numpy()
    assert np.abs(weight - reference).max() < 1e-4 * np.abs(reference).max()


def test_recorded_peak_is_the_arithmetic_of_the_largest_pass(tmp_path):
    parent = tmp_path / "parent"
    tiny_nas_llama(max_position_embeddings=64).save_pretrained(parent)
    char_tokenizer().save_pretrained(parent)
    data = DataConfig(samples=4, heldout=2, seq_len=16, batch_size=2)
    common = dict(parent=str(parent), block_configs=PLAN, data=data, perplexity=False)
    budget = CHANNELS + FIT  # 69,632 bytes: channels 0 + fit 1, then one fit a pass
    config = PruneConfig(**common, calibration_budget_gib=budget / GIB)
    planned = dry_run(config)["calibration_memory"]
    record = run_prune(config, tmp_path / "out")["calibration_memory"]
    assert record == json.loads((tmp_path / "out" / "prune.json").read_text())["calibration_memory"]
    assert record["budget_bytes"] == budget and record["accumulate_on"] == "cpu"
    assert record["passes"] == 4 and record["devices"] == ["cpu"]
    assert record["peak_bytes"] == record["measured_peak_bytes"] == 2 * 64 * 64 * 8 + 512 * 8
    assert record["fitted_weights_bytes_on_cpu"] == 4 * 64 * 64 * 4  # four float32 weights
    assert planned == {k: v for k, v in record.items() if k in planned}
    one_pass = run_prune(PruneConfig(**common, accumulate_on="device"), tmp_path / "one")
    assert one_pass["calibration_memory"]["passes"] == 1
    assert one_pass["calibration_memory"]["measured_peak_bytes"] == 512 * 8 + 4 * FIT
    grouped = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    single = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    assert all(torch.equal(grouped[k], single[k]) for k in single)


def test_51b_recipe_calibration_memory_at_70b_scale(parent_70b):  # noqa: F811
    recipe = ROOT / "recipes/llama-3.1-70b/nemotron-51b-blocks.yaml"
    fit = 2 * 8192 * 8192 * 8  # 1 GiB per linear attention
    channels = 28672 * 8  # the 70B's FFN width, for each of the 36 resized FFNs
    total = 18 * fit + 36 * channels  # 19,335,610,368 bytes
    one_pass = dry_run(load_recipe(recipe, PruneConfig, [f"parent={parent_70b}"]))
    memory = one_pass["calibration_memory"]
    assert (memory["passes"], memory["peak_bytes"], memory["accumulate_on"]) == (1, total, "cpu")
    budget = [f"parent={parent_70b}", "calibration_budget_gib=4.5"]
    grouped = dry_run(load_recipe(recipe, PruneConfig, budget))["calibration_memory"]
    assert grouped["passes"] == 5  # 4 fits of 1 GiB a pass (with the channel sums between)
    assert sum(g["bytes"] for g in grouped["groups"]) == total
    assert 4 * fit < grouped["peak_bytes"] <= 4.5 * GIB
    with pytest.raises(MinitronError, match="0.5 GiB is too small: .* alone needs 1 GiB"):
        dry_run(
            load_recipe(recipe, PruneConfig, [f"parent={parent_70b}", "calibration_budget_gib=0.5"])
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("accumulate_on", ["cpu", "device"])
def test_accumulators_on_the_cpu_leave_the_gpu_free(accumulate_on):
    # hidden 1024: one fit holds 16 MiB; attention -> linear in all 8 layers holds 128 MiB.
    shape = dict(hidden_size=1024, intermediate_size=1024, num_attention_heads=8)
    model = llama_to_nas(tiny_nas_llama(num_layers=8, **shape)).cuda()
    edits = plan_edits(model.config, [block("linear", 1.5)] * 8)
    calib = [b.cuda() for b in token_batches(2, batch=2, seq_len=64)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    memory = CalibrationMemory(accumulate_on)
    calibration = collect_statistics(model, edits, calib, RIDGE, memory)
    peak = torch.cuda.max_memory_allocated() - base
    fits = 8 * 2 * 1024 * 1024 * 8
    assert calibration.record["measured_peak_bytes"] == fits
    if accumulate_on == "cpu":
        assert calibration.record["devices"] == ["cpu"]
        assert peak < fits / 3  # one batch's products of one layer, plus activations
    else:
        assert calibration.record["devices"] == ["cuda:0"]
        assert peak >= fits

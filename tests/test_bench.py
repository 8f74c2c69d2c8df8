"""``minitron bench``: exact sizes from configs, KV cache per layer, timing and speed-ups."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch

from minitron import bench
from minitron.commands.bench import BenchConfig, add_speedups, run_bench, timing_skip_reason
from minitron.errors import MinitronError
from minitron.modeling.cache_api import CACHE_KWARG
from tests.conftest import tiny_config, tiny_llama
from tests.test_cli import ROOT, assert_user_error, minitron

LLAMA_8B = ROOT / "tests/fixtures/llama-3.1-8b"
DEPTH_4B = ROOT / "tests/fixtures/llama-3.1-minitron-4b-depth"


def test_8b_vs_4b_depth_sizes_exactly(tmp_path):
    """The Minitron paper's 8,030,261,248 -> 4,540,469,248, from configs on the meta device."""
    result = minitron("bench", LLAMA_8B, DEPTH_4B, "--no-speed", "--output", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "b/bench.json").read_text())
    big, small = record["models"]
    assert (big["params"], small["params"]) == (8_030_261_248, 4_540_469_248)
    assert (big["layers"], small["layers"]) == (32, 16)
    assert (big["bf16_bytes"], small["bf16_bytes"]) == (16_060_522_496, 9_080_938_496)
    ratio = Fraction(small["bf16_bytes"], big["bf16_bytes"])
    assert ratio == Fraction(4_540_469_248, 8_030_261_248)
    assert (big["kv_bytes_per_token"], small["kv_bytes_per_token"]) == (131_072, 65_536)
    assert big["timing_skipped"] == small["timing_skipped"] == "--no-speed"
    assert big["speedup"] == small["speedup"] == {}
    assert "8,030,261,248" in result.stdout and "4,540,469,248" in result.stdout
    assert f"{float(ratio):.4f}" == "0.5654" and "0.5654×" in result.stdout


def write_config(folder, num_layers):
    folder.mkdir()
    tiny_config(num_layers).to_json_file(folder / "config.json")
    return folder


def test_speedup_of_two_tiny_configs(tmp_path):
    deep = write_config(tmp_path / "deep", 8)
    shallow = write_config(tmp_path / "shallow", 2)
    out = tmp_path / "bench"
    result = minitron(
        "bench", deep, shallow, "--batch-sizes", "1,2", "--prompt-len", "8", "--gen-len", "4",
        "--repeats", "2", "--warmup", "1", "--threads", "1", "--output", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "bench.json").read_text())
    first, second = record["models"]
    assert record["device"] == "cpu" and record["dtype"] == "float32"
    assert record["torch_threads"] == 1
    for entry in record["models"]:
        assert entry["weights"] == "random (config only)" and entry["timing_skipped"] is None
        assert set(entry["prefill_tokens_per_s"]) == set(entry["decode_tokens_per_s"])
        assert set(entry["decode_tokens_per_s"]) == {"b1_t8", "b2_t8"}
        assert all(v > 0 for v in entry["prefill_tokens_per_s"].values())
    assert first["speedup"] == {"b1_t8": 1.0, "b2_t8": 1.0}
    for key, value in second["speedup"].items():
        assert value == second["decode_tokens_per_s"][key] / first["decode_tokens_per_s"][key]
    assert "speed-up" in result.stdout
    assert f"{second['speedup']['b1_t8']:.2f}×" in result.stdout


HAND_WRITTEN_NAS = {
    "model_type": "nemotron-nas",
    "hidden_size": 8192,
    "num_attention_heads": 64,
    "num_key_value_heads": None,
    "num_hidden_layers": 5,
    "block_configs": [
        {"attention": {"n_heads_in_group": 8, "no_op": False, "replace_with_linear": False}},
        {"attention": {"n_heads_in_group": 16, "no_op": False, "replace_with_linear": False}},
        {"attention": {"n_heads_in_group": None, "no_op": True, "replace_with_linear": False}},
        {"attention": {"n_heads_in_group": None, "no_op": False, "replace_with_linear": True}},
        {"attention": {"n_heads_in_group": 64, "no_op": False, "replace_with_linear": False}},
    ],
}


def test_kv_cache_of_a_nemotron_nas_config():
    assert bench.kv_heads_per_layer(HAND_WRITTEN_NAS) == [8, 4, 0, 0, 1]
    # 2 (K, V) * (8 + 4 + 0 + 0 + 1) heads * 128 head_dim * 2 bytes
    assert bench.kv_bytes_per_token(HAND_WRITTEN_NAS) == 2 * 13 * 128 * 2 == 6656
    assert bench.kv_bytes_per_token(HAND_WRITTEN_NAS, bytes_per_value=4) == 13_312


def test_kv_cache_block_configs_as_objects():
    class Attention:
        def __init__(self, group, no_op=False):
            self.n_heads_in_group, self.no_op, self.replace_with_linear = group, no_op, False

    class Block:
        def __init__(self, attention):
            self.attention = attention

    config = dict(
        HAND_WRITTEN_NAS, block_configs=[Block(Attention(32)), Block(Attention(None, True))]
    )
    assert bench.kv_heads_per_layer(config) == [2, 0]


def test_kv_cache_bad_group():
    bad = dict(HAND_WRITTEN_NAS, block_configs=[{"attention": {"n_heads_in_group": 7}}])
    with pytest.raises(MinitronError, match=r"block_configs\[0\].attention.n_heads_in_group"):
        bench.kv_bytes_per_token(bad)


def test_kv_cache_of_plain_configs():
    llama = json.loads((LLAMA_8B / "config.json").read_text())
    assert bench.kv_bytes_per_token(llama) == 2 * 32 * 8 * 128 * 2
    mha = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 3}
    assert bench.kv_bytes_per_token(mha) == 2 * 3 * 4 * 16 * 2
    explicit = dict(mha, head_dim=32, num_key_value_heads=2)
    assert bench.kv_bytes_per_token(explicit) == 2 * 3 * 2 * 32 * 2


def test_median_seconds_warms_up_then_takes_the_median(monkeypatch):
    clock = iter([0.0, 100.0, 0.0, 5.0, 0.0, 1.0, 0.0, 3.0])  # warm-up 100 s, then 5, 1, 3
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    prepared = []
    seconds = bench.median_seconds(
        lambda: prepared.append(1) or (lambda: None), torch.device("cpu"), repeats=3, warmup=1
    )
    assert seconds == 3.0 and len(prepared) == 4


def test_decode_prefills_then_steps_one_token_with_the_cache():
    model = tiny_llama(2)
    calls = []
    original = model.forward

    def spy(input_ids=None, **kwargs):  # the cache under the installed release's name
        calls.append((tuple(input_ids.shape), kwargs.get(CACHE_KWARG) is not None))
        return original(input_ids=input_ids, **kwargs)

    model.forward = spy
    rate = bench.decode_tokens_per_s(model, 3, 5, gen_len=4, repeats=2, warmup=1)
    run = [((3, 5), False)] + [((3, 1), True)] * 4
    assert calls == run * 3 and rate > 0
    calls.clear()
    assert bench.prefill_tokens_per_s(model, 2, 7, repeats=2, warmup=0) > 0
    assert calls == [((2, 7), False)] * 2


def test_timing_skipped_when_too_big_or_too_slow(monkeypatch):
    size = {"params": 10**9, "kv_bytes_per_token": 2048}
    config = BenchConfig(models=["x"], batch_sizes=[1], prompt_len=8, gen_len=2)
    fast = (1e15, 1e13)
    monkeypatch.setattr("minitron.commands.bench.free_memory", lambda device: 2 * 10**9)
    assert timing_skip_reason(size, config, "cpu", fast) == "needs 3.7 GiB, 1.9 GiB free on cpu"
    monkeypatch.setattr("minitron.commands.bench.free_memory", lambda device: 10**12)
    assert timing_skip_reason(size, config, "cpu", fast) is None
    slow = (1e9, 1e9)  # 4 runs * (2e9 * 18 / 1e9 + 4 * 4e9 / 1e9) = 208 s
    reason = timing_skip_reason(
        size, BenchConfig(**{**config.__dict__, "max_seconds": 100}), "cpu", slow
    )
    assert reason == "would take about 208 s here, over --max-seconds 100"
    assert (
        timing_skip_reason(size, BenchConfig(**{**config.__dict__, "max_seconds": 0}), "cpu", slow)
        is None
    )


def test_speedups_against_the_first_model():
    models = [
        {"decode_tokens_per_s": {"b1_t8": 10.0, "b8_t8": 40.0}},
        {"decode_tokens_per_s": {"b1_t8": 25.0, "b8_t8": 60.0}},
        {},
    ]
    add_speedups(models)
    assert [m["speedup"] for m in models] == [
        {"b1_t8": 1.0, "b8_t8": 1.0}, {"b1_t8": 2.5, "b8_t8": 1.5}, {},
    ]  # fmt: skip


def test_missing_model_is_one_line():
    assert_user_error(minitron("bench", "./no-such-model", "--no-speed"), "model not found")


def test_bad_options_and_existing_output(tmp_path):
    with pytest.raises(MinitronError, match="batch sizes must be 1 or more"):
        BenchConfig(models=["x"], batch_sizes=[0])
    with pytest.raises(MinitronError, match="give at least one model"):
        BenchConfig(models=[])
    (tmp_path / "out").mkdir()
    with pytest.raises(MinitronError, match="output folder exists"):
        run_bench(BenchConfig(models=[str(LLAMA_8B)], speed=False), tmp_path / "out")


def test_kv_cache_of_nemotron_51b_vs_llama_70b():
    """Puzzle's 51B: 54 attention layers (kv 8, 4, 2 or 1 heads), 26 without a cache."""
    config = json.loads((ROOT / "tests/fixtures/nemotron-51b-instruct/config.json").read_text())
    heads = bench.kv_heads_per_layer(config)
    assert len(heads) == 80 and heads.count(0) == 26 and set(heads) == {0, 1, 2, 4, 8}
    assert bench.kv_bytes_per_token(config) == 189_952  # vs 327,680 for Llama-3.1-70B
    assert bench.kv_bytes_per_token(config) == 2 * sum(heads) * 128 * 2


def test_checkpoint_and_config_only_folder_give_the_same_sizes(tmp_path, tiny_checkpoint):
    config_only = write_config(tmp_path / "config-only", 6)
    record = run_bench(
        BenchConfig(
            models=[str(tiny_checkpoint), str(config_only)], batch_sizes=[1], prompt_len=4,
            gen_len=2, repeats=1, warmup=0, threads=1,
        )
    )  # fmt: skip
    real, fake = record["models"]
    assert (real["weights"], fake["weights"]) == ("checkpoint", "random (config only)")
    assert real["params"] == fake["params"] == tiny_llama(6).num_parameters()
    assert real["kv_bytes_per_token"] == 2 * 6 * 2 * 8 * 2  # 2 KV heads of 32 / 4
    assert real["speedup"] == {"b1_t4": 1.0} and fake["speedup"]["b1_t4"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_cuda(tmp_path):
    deep, shallow = write_config(tmp_path / "deep", 8), write_config(tmp_path / "shallow", 2)
    config = BenchConfig(
        models=[str(deep), str(shallow)], batch_sizes=[1, 4], prompt_len=16, gen_len=8,
        device="cuda",
    )  # fmt: skip
    record = run_bench(config)
    assert record["device"] == "cuda" and record["dtype"] == "bfloat16"
    assert all(m["timing_skipped"] is None for m in record["models"])
    assert set(record["models"][1]["speedup"]) == {"b1_t16", "b4_t16"}

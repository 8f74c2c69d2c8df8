"""The nemotron-nas config and model: published configs, conversion, cache, save/load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from minitron.errors import MinitronError
from minitron.modeling import (
    BlockConfig,
    DeciLMConfig,
    DeciLMForCausalLM,
    count_parameters,
    llama_to_nas,
    nas_config_from_llama,
)
from minitron.modeling.cache_api import cache_kwargs, output_cache
from minitron.nas import layer_parameters, plan_edits, target_config
from tests.nas_helpers import (
    MIXED,
    block,
    published,
    single_thread,
    tiny_nas,
    tiny_nas_llama,
    token_batches,
)

PUBLISHED_COUNTS = {
    "nemotron-super-49b-v1": 49_867_145_216,
    "nemotron-ultra-253b-v1": 253_401_268_224,
    "nemotron-51b-instruct": 51_501_015_040,  # reconstructed config (SOURCES.md)
}

one_thread = pytest.fixture(autouse=True)(single_thread)


def width_by_hand(ffn_mult: float, hidden: int) -> int:
    """int(2 * mult * hidden / 3), then up to the next multiple of 256."""
    raw = int(2 * ffn_mult * hidden / 3)
    return -(-raw // 256) * 256


def count_by_hand(cfg: dict) -> int:
    """Parameters of a published nemotron-nas config.json, from its block list alone."""
    h, heads, vocab = cfg["hidden_size"], cfg["num_attention_heads"], cfg["vocab_size"]
    head_dim = h // heads
    total = vocab * h * (1 if cfg["tie_word_embeddings"] else 2) + h  # embed, head, norm
    for blk in cfg["block_configs"]:
        a, f = blk["attention"], blk["ffn"]
        if a["replace_with_linear"]:
            total += h + h * h
        elif not a["no_op"]:
            kv = heads // a["n_heads_in_group"]
            total += h + 2 * h * h + 2 * h * kv * head_dim
        if f["replace_with_linear"]:
            total += h + h * h
        elif not f["no_op"]:
            total += h + 3 * h * width_by_hand(f["ffn_mult"], h)
    return total


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_published_configs_load_and_count(name):
    raw = published(name)
    config = DeciLMConfig.from_dict(raw)
    assert len(config.block_configs) == raw["num_hidden_layers"]
    assert [b.to_dict() for b in config.block_configs] == raw["block_configs"]
    assert config.rope_parameters["rope_type"] == "llama3"
    by_hand = count_by_hand(raw)
    print(f"{name}: meta {count_parameters(config):,} by hand {by_hand:,}")
    assert count_parameters(config) == by_hand == PUBLISHED_COUNTS[name]
    outside = (2 * raw["vocab_size"] + 1) * raw["hidden_size"]  # embed, head, final norm
    assert sum(layer_parameters(config)) == by_hand - outside


def test_llama_70b_config_converts_to_its_exact_count():
    raw = published("llama-3.1-70b-instruct")
    llama = LlamaConfig.from_dict(raw)
    nas = nas_config_from_llama(llama)
    assert {b.attention.n_heads_in_group for b in nas.block_configs} == {8}
    assert {b.ffn.intermediate_size(8192) for b in nas.block_configs} == {28672}
    h, kv_dim, ffn, vocab = 8192, 8 * 128, 28672, 128256
    by_hand = 80 * (2 * h + 2 * h * h + 2 * h * kv_dim + 3 * h * ffn) + 2 * vocab * h + h
    assert count_parameters(llama) == count_parameters(nas) == by_hand == 70_553_706_496


def test_51b_blocks_on_the_70b_config_size_the_51b_model():
    llama = LlamaConfig.from_dict(published("llama-3.1-70b-instruct"))
    blocks = published("nemotron-51b-instruct")["block_configs"]
    plan = plan_edits(nas_config_from_llama(llama), blocks)
    assert {(e.attention, e.ffn) for e in plan} >= {("kv", "resize"), ("linear", "resize")}
    target = target_config(llama, blocks)
    assert (count_parameters(llama), count_parameters(target)) == (70_553_706_496, 51_501_015_040)
    assert target.rope_parameters == nas_config_from_llama(llama).rope_parameters


def test_smollm2_config_converts_and_counts_like_the_real_model():
    raw = published("smollm2-135m")
    nas = nas_config_from_llama(LlamaConfig.from_dict(raw))
    assert nas.tie_word_embeddings and nas.block_configs[0].describe() == "attn g3 + ffn 4"
    h, kv_dim, ffn, vocab = 576, 3 * 64, 1536, 49152
    by_hand = 30 * (2 * h + 2 * h * h + 2 * h * kv_dim + 3 * h * ffn) + vocab * h + h
    assert count_parameters(nas) == by_hand == 134_515_008  # tied head counted once


def test_smollm2_width_is_reachable_and_odd_widths_are_refused():
    # SmolLM2-135M: hidden 576, FFN 1536 = 6 * 256 -> ffn_mult 4.0 exactly.
    smol = tiny_nas_llama(
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        num_layers=1,
    ).config
    assert nas_config_from_llama(smol).block_configs[0].ffn.ffn_mult == 4.0
    with pytest.raises(MinitronError, match="FFN width 1000 cannot be written"):
        nas_config_from_llama(tiny_nas_llama(intermediate_size=1000, num_layers=1).config)


def test_identity_conversion_gives_the_llama_logits():
    llama = tiny_nas_llama(num_layers=3)
    nas = llama_to_nas(llama)
    ids = token_batches(1)[0]
    with torch.no_grad():
        expected, got = llama(ids).logits, nas(ids).logits
    print("max |llama - nas| logits:", float((expected - got).abs().max()))
    assert torch.allclose(expected, got, atol=1e-5, rtol=0)
    assert nas.model.layers[0].mlp.gate_proj.weight is not None
    assert nas.model.layers[0].self_attn.k_proj.weight.data_ptr() == (
        llama.model.layers[0].self_attn.k_proj.weight.data_ptr()  # shared, not copied
    )


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def test_llama3_rope_converts_saves_and_loads_exactly(tmp_path):
    llama = tiny_nas_llama(num_layers=2, rope_parameters=dict(LLAMA3_ROPE))
    nas = llama_to_nas(llama)
    ids = token_batches(1, seq_len=40)[0]
    with torch.no_grad():
        assert torch.allclose(llama(ids).logits, nas(ids).logits, atol=1e-5, rtol=0)
    plain = llama_to_nas(tiny_nas_llama(num_layers=2))
    assert not torch.allclose(nas.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq)
    nas.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rope_theta"] == 500000.0 and "rope_parameters" not in saved
    assert saved["rope_scaling"] == {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, nas(ids).logits)


def test_sdpa_is_the_default_and_equals_eager():
    model = tiny_nas()
    assert model.config._attn_implementation == "sdpa"
    ids = token_batches(1)[0]
    with torch.no_grad():
        sdpa = model(ids).logits
        model.set_attn_implementation("eager")
        assert torch.allclose(model(ids).logits, sdpa, atol=1e-4)


def test_tied_llama_converts_with_tied_head():
    llama = tiny_nas_llama(num_layers=2, tie_word_embeddings=True)
    nas = llama_to_nas(llama)
    ids = token_batches(1)[0]
    with torch.no_grad():
        assert torch.allclose(llama(ids).logits, nas(ids).logits, atol=1e-5, rtol=0)
    assert nas.lm_head.weight is nas.model.embed_tokens.weight


def test_no_op_blocks_hold_no_weights_and_names_are_the_published_ones():
    names = set(tiny_nas().state_dict())
    assert not {
        n for n in names if n.startswith(("model.layers.0.self_attn", "model.layers.0.input"))
    }
    assert not {n for n in names if n.startswith("model.layers.4.")}
    assert {
        "model.layers.2.self_attn.linear_attn.weight",
        "model.layers.2.mlp.linear_mlp.weight",
        "model.layers.2.input_layernorm.weight",
        "model.layers.2.post_attention_layernorm.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.3.input_layernorm.weight",
    } <= names
    assert "model.layers.3.post_attention_layernorm.weight" not in names
    model = tiny_nas()
    assert model.model.layers[1].self_attn.k_proj.weight.shape == (4 * 8, 64)  # 8 heads / 2
    assert model.model.layers[1].mlp.down_proj.weight.shape == (64, 256)  # mult 6 -> 256


def test_linear_and_no_op_layers_compute_the_documented_formula():
    model = tiny_nas([block("linear", "linear"), block("no_op", "no_op")])
    layer0, layer1 = model.model.layers
    x = torch.randn(2, 5, 64)

    def rms(v, weight):
        return weight * v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)

    with torch.no_grad():
        mid = x + rms(x, layer0.input_layernorm.weight) @ layer0.self_attn.linear_attn.weight.T
        out = (
            mid + rms(mid, layer0.post_attention_layernorm.weight) @ layer0.mlp.linear_mlp.weight.T
        )
        assert torch.allclose(layer0(x), out, atol=1e-5)
        assert torch.equal(layer1(x), x)


def test_generate_with_cache_equals_without_on_every_block_kind():
    model = tiny_nas()
    prompt = token_batches(1, batch=2, seq_len=6)[0]
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=1)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
        # Token by token through the cache, the logits equal one full forward.
        full = model(cached).logits
        out = model(cached[:, :6], use_cache=True)
        steps, cache = [out.logits], output_cache(out)
        for t in range(6, cached.shape[1]):
            out = model(cached[:, t : t + 1], use_cache=True, **cache_kwargs(cache))
            steps.append(out.logits)
    assert torch.equal(cached, uncached)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-4)
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert (
        kinds
        == ["DummyLayer", "DynamicLayer", "DummyLayer", "DynamicLayer", "DummyLayer"]
        + ["DynamicLayer"] * 2
    )
    assert cache.layers[1].keys.shape[1] == 4 and cache.layers[5].keys.shape[1] == 8


def test_generate_reads_the_cache_it_is_given():
    """generate() hands the model its cache; each step after the prompt is one token.

    Under transformers 5.24 the cache comes as ``cache=``; a model reading only
    ``past_key_values`` then got a fresh empty cache each step.
    """
    model = tiny_nas()
    prompt = token_batches(1, batch=2, seq_len=6)[0]
    seen, original = [], model.model.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(output_cache(out).get_seq_length())
        return out

    model.model.forward = spy
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=1)
    assert seen == [6, 7, 8, 9, 10]


def test_nas_converted_from_llama_generates_what_the_llama_generates():
    llama = tiny_nas_llama(num_layers=3)
    nas = llama_to_nas(llama)
    prompt = token_batches(1, batch=2, seq_len=5)[0]
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=1)
    with torch.no_grad():
        for use_cache in (True, False):
            expected = llama.generate(prompt, use_cache=use_cache, **kwargs)
            got = nas.generate(prompt, use_cache=use_cache, **kwargs)
            assert torch.equal(got, expected), f"use_cache={use_cache}"
        # The scores too, step by step: not just the same argmax.
        run = dict(use_cache=True, output_logits=True, return_dict_in_generate=True, **kwargs)
        ref, out = llama.generate(prompt, **run), nas.generate(prompt, **run)
    for a, b in zip(ref.logits, out.logits, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_cache_is_taken_under_either_name_but_not_both():
    model = tiny_nas()
    ids = token_batches(1, batch=1, seq_len=8)[0]
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        for name in ("cache", "past_key_values"):
            cache = output_cache(model(ids[:, :7], use_cache=True))
            step = model(ids[:, 7:], use_cache=True, **{name: cache}).logits[:, -1]
            assert torch.allclose(step, full, atol=1e-5), name
        cache = output_cache(model(ids[:, :7], use_cache=True))
        with pytest.raises(ValueError, match="not both"):
            model.model(ids[:, 7:], cache=cache, past_key_values=cache)


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = tiny_nas()
    model.save_pretrained(tmp_path)
    ids = token_batches(1)[0]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is DeciLMForCausalLM
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    saved = json.loads((tmp_path / "config.json").read_text())
    ref = published("nemotron-super-49b-v1")
    assert set(ref) - {"_name_or_path", "auto_map"} <= set(saved)
    assert saved["model_type"] == "nemotron-nas" and saved["architectures"] == ["DeciLMForCausalLM"]
    assert saved["intermediate_size"] is None and saved["num_key_value_heads"] is None
    assert [set(b["attention"]) for b in saved["block_configs"]] == [
        set(ref["block_configs"][0]["attention"])
    ] * len(MIXED)
    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())


def test_fresh_process_loads_with_import_minitron_only(tmp_path):
    model = tiny_nas()
    model.save_pretrained(tmp_path)
    ids = token_batches(1)[0]
    with torch.no_grad():
        expected = model(ids).logits
    script = textwrap.dedent(
        f"""
        import sys
        import minitron
        # import minitron stays light (CLI start-up); transformers' import registers it
        assert "transformers" not in sys.modules and "torch" not in sys.modules
        import torch
        from transformers import AutoModelForCausalLM
        from safetensors.torch import save_file
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})
        ids = torch.tensor({ids.tolist()})
        with torch.no_grad():
            save_file({{"logits": model(ids).logits}}, {str(tmp_path / "out.safetensors")!r})
        print(type(model).__name__)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("DeciLMForCausalLM")
    assert torch.equal(load_file(tmp_path / "out.safetensors")["logits"], expected)


def test_published_auto_map_loads_our_class_without_remote_code(tmp_path):
    model = tiny_nas()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = published("nemotron-super-49b-v1")["auto_map"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    ids = token_batches(1)[0]
    for trust in (None, False):
        kwargs = {} if trust is None else {"trust_remote_code": trust}
        assert type(AutoConfig.from_pretrained(tmp_path, **kwargs)) is DeciLMConfig
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs)
        assert type(loaded) is DeciLMForCausalLM
        with torch.no_grad():
            assert torch.equal(model(ids).logits, loaded(ids).logits)
    loaded.save_pretrained(tmp_path / "again")
    assert "auto_map" not in json.loads((tmp_path / "again" / "config.json").read_text())


def test_published_config_folder_loads_through_autoconfig(tmp_path):
    raw = published("nemotron-super-49b-v1")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is DeciLMConfig and config.num_hidden_layers == 80
    no_op = [i for i, b in enumerate(raw["block_configs"]) if b["attention"]["no_op"]]
    assert len(no_op) == 31 and config.kv_heads(0) == 8 and config.kv_heads(no_op[0]) is None
    assert config.layer_types.count("full_attention") == 49


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"window_length": 4096}, "window_length"),
        ({"num_sink_tokens": 4}, "num_sink_tokens"),
        ({"sparsify": ["w"]}, "sparsify"),
        ({"unshifted_sink": True}, "unshifted_sink"),
        ({"n_heads_in_group": 3}, "n_heads_in_group 3 does not divide"),
        ({"flash": True}, "unknown key 'flash'"),
        ({"no_op": True, "replace_with_linear": True}, "both set"),
    ],
)
def test_unsupported_or_bad_attention_is_one_line_error(tmp_path, change, message):
    raw = published("nemotron-super-49b-v1")
    raw["block_configs"][0]["attention"].update(change)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(MinitronError, match=message) as err:
        AutoConfig.from_pretrained(tmp_path)
    assert "\n" not in str(err.value)


def test_bad_ffn_and_block_counts_are_errors():
    raw = published("nemotron-super-49b-v1")
    with pytest.raises(MinitronError, match="ffn sparsify"):
        BlockConfig.from_dict(block(8, 1.0) | {"ffn": {"ffn_mult": 1.0, "sparsify": ["x"]}})
    with pytest.raises(MinitronError, match="ffn_mult must be a number"):
        BlockConfig.from_dict(block(8, None))
    with pytest.raises(MinitronError, match="79 block_configs for num_hidden_layers 80"):
        DeciLMConfig.from_dict(raw | {"block_configs": raw["block_configs"][:79]})
    with pytest.raises(MinitronError, match="unsupported nemotron-nas feature: sliding_window"):
        DeciLMConfig.from_dict(raw | {"sliding_window": 4096})
    with pytest.raises(MinitronError, match="unsupported nemotron-nas feature: layer_types"):
        DeciLMConfig.from_dict(raw | {"layer_types": ["full_attention"] * 80})
    with pytest.raises(MinitronError, match="head_dim 64 is not hidden_size // heads"):
        DeciLMConfig.from_dict(raw | {"head_dim": 64})
    assert DeciLMConfig.from_dict(raw | {"head_dim": 128}).head_dim == 128

"""``minitron prune`` with block edits: rules, block lists, engines, the dry run, a tiny run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

from minitron.commands.prune import PruneConfig, dry_run, run_prune
from minitron.config import DataConfig
from minitron.data import batches, load_text_data
from minitron.errors import MinitronError
from minitron.modeling import BlockConfig, DeciLMConfig, llama_to_nas, nas_config_from_llama
from minitron.nas import apply_block_configs
from minitron.nas.engines import check_engine
from minitron.nas.rules import parse_layers, resolve_block_configs, resolve_rules
from tests.conftest import char_tokenizer
from tests.nas_helpers import MIXED, block, published, single_thread, tiny_nas_llama

one_thread = pytest.fixture(autouse=True)(single_thread)

# The tiny parent: 6 layers, 8 heads sharing 4 K/V heads (group 2), FFN 512 (ffn_mult 12).
PARENT = nas_config_from_llama(tiny_nas_llama(num_layers=6).config)


def blocks_of(*entries) -> list[BlockConfig]:
    return [BlockConfig.from_dict(e) for e in entries]


def test_rules_apply_in_order_per_sub_block():
    rules = [
        {"layers": "all", "ffn_mult": 6},
        {"layers": "2-4", "attention": "no_op"},
        {"layers": [0, "3-4"], "kv_heads": 1},  # overrides the no_op of 3 and 4
        {"layers": 5, "attention": "linear", "ffn": "keep"},  # FFN back to the parent's
        {"layers": [1], "n_heads_in_group": 4, "ffn": "no_op"},
    ]
    expected = blocks_of(
        block(8, 6), block(4, "no_op"), block("no_op", 6), block(8, 6), block(8, 6),
        block("linear", 12),
    )  # fmt: skip
    assert resolve_rules(PARENT, rules) == expected


def test_keep_alone_is_the_parents_block():
    rules = [{"layers": "all", "kv_heads": 1}, {"layers": 2, "attention": "keep"}]
    resolved = resolve_rules(PARENT, rules)
    assert [b.attention.n_heads_in_group for b in resolved] == [8, 8, 2, 8, 8, 8]
    assert all(b.ffn == PARENT.block_configs[0].ffn for b in resolved)


def test_layer_forms():
    assert parse_layers("all", 4, "r") == [0, 1, 2, 3]
    assert parse_layers([3, "0-1", 1], 4, "r") == [0, 1, 3]
    assert parse_layers("2-2", 4, "r") == [2]


@pytest.mark.parametrize(
    "rule, message",
    [
        ({"layers": "all", "atention": "no_op"}, "rules[0]: unknown key 'atention' (known keys"),
        ({"ffn_mult": 2}, "rules[0]: missing key 'layers'"),
        ({"layers": 6, "ffn": "no_op"}, "rules[0]: layer 6 out of range: the parent has 6 layers"),
        ({"layers": [1, "4-9"], "ffn": "no_op"}, "layer 9 out of range"),
        ({"layers": -1, "ffn": "no_op"}, "layer -1 out of range"),
        ({"layers": "4-2", "ffn": "no_op"}, "layer range '4-2' runs backwards"),
        ({"layers": "first", "ffn": "no_op"}, "layers must be all, an index, 'a-b'"),
        ({"layers": True, "ffn": "no_op"}, "layers must be all"),
        ({"layers": [], "ffn": "no_op"}, "layers is an empty list"),
        ({"layers": "all", "kv_heads": 3}, "kv_heads 3 does not divide the parent's 8 attention"),
        ({"layers": "all", "n_heads_in_group": 5}, "n_heads_in_group 5 does not divide"),
        ({"layers": "all", "kv_heads": 0}, "kv_heads must be an integer >= 1"),
        ({"layers": "all", "kv_heads": 1, "n_heads_in_group": 8}, "not both"),
        ({"layers": "all", "attention": "no_op", "kv_heads": 1}, "kv_heads needs attention: keep"),
        ({"layers": "all", "attention": "drop"}, "attention must be one of keep, no_op, linear"),
        ({"layers": "all", "ffn": "linear", "ffn_mult": 2}, "ffn_mult needs ffn: keep"),
        ({"layers": "all", "ffn_mult": -1}, "ffn_mult must be a number > 0"),
        ({"layers": "all"}, "rules[0]: the rule changes nothing"),
        ("all: no_op", "rules[0]: expected a mapping"),
    ],
)
def test_bad_rules_are_one_line_errors_naming_the_key(rule, message):
    with pytest.raises(MinitronError) as err:
        resolve_rules(PARENT, [rule])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_block_configs_are_checked_against_the_parent():
    full = [block(2, 12)] * 6
    assert resolve_block_configs(PARENT, full) == blocks_of(*full)
    compact = [{"attention": {"no_op": True}, "ffn": {"ffn_mult": 3}}] * 6
    resolved = resolve_block_configs(PARENT, compact)[0].to_dict()
    assert resolved["attention"]["n_heads_in_group"] is None
    cases = [
        ([block(2, 12)] * 5, "block_configs has 5 entries, the parent has 6 layers"),
        ([block(2, 12)] * 5 + [block(3, 12)], "block_configs[5]: n_heads_in_group 3 does not"),
        ([{"attention": {"no_opp": True}}] * 6, "block_configs[0].attention: unknown key 'no_opp'"),
        ([{"attn": {}}] * 6, "block_configs[0]: unknown key 'attn'"),
    ]
    for blocks, message in cases:
        with pytest.raises(MinitronError, match=message.replace("[", r"\[")):
            resolve_block_configs(PARENT, blocks)


def served(**overrides) -> DeciLMConfig:
    """A config-only model llama.cpp could serve unless ``overrides`` say otherwise."""
    values = dict(
        vocab_size=128256, hidden_size=64, num_attention_heads=8, num_hidden_layers=2,
        tie_word_embeddings=True, block_configs=[block(2, 12), block("no_op", 12)],
    )  # fmt: skip
    return DeciLMConfig(**(values | overrides))


@pytest.mark.parametrize(
    "engine, config, message",
    [
        ("vllm", served(block_configs=[block(2, 12), block("linear", 12)]),
         "serve_with vllm: layer 1 has attention replace_with_linear, which vLLM cannot serve"),
        ("vllm", served(block_configs=[block(2, "linear"), block(2, 12)]),
         "serve_with vllm: layer 0 has FFN replace_with_linear"),
        ("llamacpp", served(block_configs=[block(2, 12), block(2, "linear")]),
         "serve_with llamacpp: layer 1 has FFN replace_with_linear, which llama.cpp"),
        ("llamacpp", served(block_configs=[block(2, 12), block(2, "no_op")]),
         "layer 1 has FFN no_op"),
        ("llamacpp", served(block_configs=[block("no_op", 12), block(2, 12)]),
         "layer 0 has attention no_op (llama.cpp fails to load it in layer 0)"),
        ("llamacpp", served(vocab_size=49152), "only Llama-3 (128256) or Llama-2 (32000)"),
        ("llamacpp", served(rope_parameters={"rope_type": "linear", "factor": 2.0}),
         "applies only llama3 RoPE scaling, this model has linear"),
    ],
)  # fmt: skip
def test_engines_refuse_what_they_cannot_serve(engine, config, message):
    with pytest.raises(MinitronError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_engine(engine, config)


def test_engines_serve_what_they_can():
    check_engine("llamacpp", served())  # attention no_op after layer 0, linear attention
    # llama.cpp's deci loader reads output.weight when present: untied heads are served
    check_engine("llamacpp", served(tie_word_embeddings=False))
    check_engine("llamacpp", served(block_configs=[block(2, 12), block("linear", 6)]))
    check_engine("vllm", served(block_configs=[block("no_op", 12), block(1, "no_op")]))
    mixed = served(num_hidden_layers=len(MIXED), block_configs=MIXED, vocab_size=7)
    check_engine("trtllm", mixed)
    check_engine(None, mixed)


def test_published_layouts_and_engines():
    llama = LlamaConfig.from_dict(published("llama-3.1-70b-instruct"))
    nas51 = nas_config_from_llama(llama).with_blocks(
        published("nemotron-51b-instruct")["block_configs"]
    )
    kinds = [b.attention.kind for b in nas51.block_configs]
    first_linear = kinds.index("linear")
    with pytest.raises(MinitronError, match=f"layer {first_linear} has attention replace_with"):
        check_engine("vllm", nas51)
    assert not nas51.tie_word_embeddings
    check_engine("llamacpp", nas51)  # untied head, linear attention, no_op attention after 0
    super49 = DeciLMConfig.from_dict(published("nemotron-super-49b-v1"))
    check_engine("vllm", super49)
    check_engine("llamacpp", super49)


@pytest.mark.parametrize(
    "layer, edit, message",
    [
        (0, {"attention": {"no_op": True}}, "layer 0 has attention no_op"),
        (7, {"ffn": {"no_op": True}}, "layer 7 has FFN no_op"),
        (7, {"ffn": {"replace_with_linear": True}}, "layer 7 has FFN replace_with_linear"),
    ],
)
def test_llamacpp_still_refuses_the_70b_derived_51b_with_unserved_kinds(layer, edit, message):
    """The same untied 70B-derived config, with one block llama.cpp cannot serve."""
    blocks = published("nemotron-51b-instruct")["block_configs"]
    blocks[layer] = blocks[layer] | edit
    nas51 = nas_config_from_llama(LlamaConfig.from_dict(published("llama-3.1-70b-instruct")))
    with pytest.raises(MinitronError, match=f"serve_with llamacpp: {message}"):
        check_engine("llamacpp", nas51.with_blocks(blocks))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rules": [], "drop_layers": [1]}, "drop_layers is a depth-pruning key and rules edits"),
        ({"block_configs": [], "target_layers": 3}, "target_layers is a depth-pruning key"),
        ({"rules": [], "method": "individual"}, "method is a depth-pruning key"),
        ({"rules": [], "block_configs": []}, "give either block_configs or rules, not both"),
        ({"drop_layers": [1], "serve_with": "vllm"}, "serve_with applies to block edits"),
        ({"rules": [], "ridge": -1.0}, "ridge must be 0 or more"),
    ],
)
def test_depth_and_block_keys_do_not_mix(values, message):
    with pytest.raises(MinitronError, match=message):
        PruneConfig(parent="p", **values)


def config_only(tmp_path, config) -> str:
    folder = tmp_path / "config-only"
    config.save_pretrained(folder)
    return str(folder)


RULES = [
    {"layers": "all", "ffn_mult": 6},
    {"layers": [1, 3], "kv_heads": 1},
    {"layers": 2, "attention": "no_op"},
    {"layers": 4, "attention": "linear", "ffn": "linear"},
]


def test_dry_run_sizes_from_config_alone(tmp_path):
    parent = config_only(tmp_path, tiny_nas_llama(num_layers=6).config)
    report = dry_run(PruneConfig(parent=parent, rules=RULES, serve_with="trtllm"))
    h, head, ffn, vocab = 64, 8, 512, 98
    attention = {4: h + 2 * h * h + 2 * h * 4 * head, 1: h + 2 * h * h + 2 * h * head}
    layer = {
        "before": attention[4] + h + 3 * h * ffn,
        "g8": attention[1] + h + 3 * h * 256,
        "no_op": h + 3 * h * 256,
        "linear": 2 * (h + h * h),
        "g2": attention[4] + h + 3 * h * 256,
    }
    after = ["g2", "g8", "no_op", "g8", "linear", "g2"]
    outside = 2 * vocab * h + h
    assert report["params_before"] == 6 * layer["before"] + outside
    assert report["params_after"] == sum(layer[k] for k in after) + outside
    assert [b["params_after"] for b in report["blocks"]] == [layer[k] for k in after]
    assert [b["after"] for b in report["blocks"]][1:4] == [
        "attn g8 + ffn 6", "attn no_op + ffn 6", "attn g8 + ffn 6",
    ]  # fmt: skip
    assert (report["layers_before"], report["layers_after"], report["dropped_layers"]) == (6, 6, [])
    assert report["bf16_bytes_after"] == 2 * report["params_after"]
    with pytest.raises(MinitronError, match="layer 4 has attention replace_with_linear"):
        dry_run(PruneConfig(parent=parent, rules=RULES, serve_with="vllm"))


def test_tiny_run_writes_the_edited_model_and_its_record(tmp_path):
    parent = tmp_path / "parent"
    llama = tiny_nas_llama(num_layers=6, max_position_embeddings=64)
    llama.save_pretrained(parent)
    char_tokenizer().save_pretrained(parent)
    data = DataConfig(samples=4, heldout=2, seq_len=16, batch_size=2)
    config = PruneConfig(parent=str(parent), rules=RULES, data=data, dtype="float32")
    record = run_prune(config, tmp_path / "out")
    # The same edits by hand, on the same calibration tokens.
    tokens = load_text_data(data, char_tokenizer())
    expected = llama_to_nas(tiny_nas_llama(num_layers=6, max_position_embeddings=64))
    calibration = batches(tokens.calibration, 2)
    apply_block_configs(expected, resolve_rules(expected.config, RULES), calibration)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = tokens.heldout
    with torch.no_grad():
        assert torch.allclose(saved(ids).logits, expected(ids).logits, atol=1e-5)
    config_json = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config_json["model_type"] == "nemotron-nas" and "auto_map" not in config_json
    assert config_json["architectures"] == ["DeciLMForCausalLM"]
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert "model.layers.4.self_attn.linear_attn.weight" in weights
    assert not any(k.startswith("model.layers.2.self_attn") for k in weights)
    on_disk = json.loads((tmp_path / "out" / "prune.json").read_text())
    assert on_disk == {k: v for k, v in record.items() if k != "output"}
    assert on_disk["kind"] == "prune" and on_disk["parent"] == str(parent)
    assert on_disk["dtype"] == {"compute": "float32", "saved": "float32"}
    assert on_disk["params_after"] == sum(p.numel() for p in saved.parameters())
    assert [r["attention"]["edit"] for r in on_disk["layers"]] == [
        "keep", "kv_heads", "no_op", "kv_heads", "linear", "keep",
    ]  # fmt: skip
    assert on_disk["layers"][4]["ffn"]["tokens"] == 4 * 16
    assert on_disk["calibration"]["calibration_tokens"] == 64
    assert on_disk["recipe"]["rules"] == RULES
    assert all(math.isfinite(on_disk[f"perplexity_{w}"]) for w in ("before", "after"))

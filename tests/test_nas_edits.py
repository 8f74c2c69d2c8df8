"""Block edits on tiny models, each against a slow reference written apart from the code."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from minitron.errors import MinitronError
from minitron.modeling import count_parameters, llama_to_nas
from minitron.nas import (
    apply_block_configs,
    attention_no_op,
    attention_to_linear,
    ffn_no_op,
    ffn_to_linear,
    narrow_ffn,
    reduce_kv_heads,
)
from tests.nas_helpers import block, single_thread, tiny_nas, tiny_nas_llama, token_batches

HEADS, HEAD_DIM, HIDDEN = 8, 8, 64

one_thread = pytest.fixture(autouse=True)(single_thread)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def kv_reference(weight: torch.Tensor, old_group: int, new_group: int) -> torch.Tensor:
    """New K/V rows by explicitly listing, per new head, the parent head of each query."""
    rows = []
    for new_head in range(HEADS // new_group):
        parents = []
        for query in range(new_head * new_group, (new_head + 1) * new_group):
            p = query // old_group
            parents.append(weight[p * HEAD_DIM : (p + 1) * HEAD_DIM])
        rows.append(torch.stack(parents).mean(dim=0))
    return torch.cat(rows)


def test_fewer_kv_heads_equal_a_llama_with_averaged_heads():
    llama = tiny_nas_llama()
    ids = token_batches(1)[0]
    nas = llama_to_nas(copy.deepcopy(llama))
    for layer in range(4):
        reduce_kv_heads(nas, layer, 4)  # 4 KV heads -> 2
    cfg = copy.deepcopy(llama.config)
    cfg.num_key_value_heads = 2
    expected = LlamaForCausalLM(cfg).eval()
    state = llama.state_dict()
    for layer in range(4):
        for name in ("k_proj", "v_proj"):
            key = f"model.layers.{layer}.self_attn.{name}.weight"
            state[key] = kv_reference(state[key], 2, 4)
    expected.load_state_dict(state)
    assert all(b.attention.n_heads_in_group == 4 for b in nas.config.block_configs)
    assert torch.allclose(logits(nas, ids), logits(expected, ids), atol=1e-5)


def test_one_kv_head_is_the_mean_of_all_and_more_heads_are_lossless():
    llama = tiny_nas_llama(num_layers=2)
    nas = llama_to_nas(copy.deepcopy(llama))
    ids = token_batches(1)[0]
    reduce_kv_heads(nas, 0, 1)  # 4 KV heads -> 8 copies: the same function
    assert torch.allclose(logits(nas, ids), logits(llama, ids), atol=1e-5)
    reduce_kv_heads(nas, 1, 8)
    k = llama.model.layers[1].self_attn.k_proj.weight
    expected = k.reshape(4, HEAD_DIM, HIDDEN).mean(dim=0)
    assert torch.allclose(nas.model.layers[1].self_attn.k_proj.weight, expected, atol=1e-6)
    with pytest.raises(MinitronError, match="n_heads_in_group 3 does not divide 8 heads"):
        reduce_kv_heads(nas, 1, 3)


@pytest.mark.parametrize("group", [3, 2, 1, 4])
def test_smaller_groups_are_lossless_only_when_they_divide_the_old_group(group):
    # 12 heads of 8 in groups of 6: 2 parent K/V heads p0 (queries 0-5), p1 (6-11).
    parent = tiny_nas([block(6, 12)], hidden_size=96, num_attention_heads=12)
    ids = token_batches(1)[0]
    k = parent.model.layers[0].self_attn.k_proj.weight.detach().clone()
    p0, p1 = k[:HEAD_DIM], k[HEAD_DIM:]
    edited = copy.deepcopy(parent)
    reduce_kv_heads(edited, 0, group)
    got = edited.model.layers[0].self_attn.k_proj.weight.detach()
    difference = (logits(edited, ids) - logits(parent, ids)).abs().max()
    if group == 4:  # 3 K/V heads: queries 0-3 used p0, 4-7 used p0, p0, p1, p1, 8-11 used p1
        assert torch.allclose(got, torch.cat([p0, (p0 + p1) / 2, p1]), atol=1e-6)
        assert difference > 1e-2  # smaller groups, yet not the same function
    else:  # 6 // group copies of each parent: the same function
        expected = torch.cat([p0] * (6 // group) + [p1] * (6 // group))
        assert torch.allclose(got, expected, rtol=0, atol=1e-7)  # a mean of equal rows
        assert difference < 1e-5


def capture_inputs(module):
    """Hook recording each call's first positional input (the normed FFN input)."""
    seen = []
    return seen, module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))


def test_narrow_ffn_keeps_the_most_active_channels():
    llama = tiny_nas_llama()
    calib, ids = token_batches(2, seed=3), token_batches(1, seed=4)[0]
    # Reference: activations of every layer from the parent, scored by hand.
    keep = {}
    for layer in range(4):
        mlp = llama.model.layers[layer].mlp
        seen, handle = capture_inputs(mlp)
        for batch in calib:
            logits(llama, batch)
        handle.remove()
        x = torch.cat([s.reshape(-1, HIDDEN) for s in seen]).double()
        act = F.silu(x @ mlp.gate_proj.weight.double().T) * (x @ mlp.up_proj.weight.double().T)
        score = act.abs().mean(dim=0).detach().numpy()
        keep[layer] = np.sort(np.argsort(-score, kind="stable")[:256])
    nas = llama_to_nas(copy.deepcopy(llama))
    for layer in reversed(range(4)):  # later layers first: each is scored on parent inputs
        narrow_ffn(nas, layer, 6.0, calib)
    cfg = copy.deepcopy(llama.config)
    cfg.intermediate_size = 256
    expected = LlamaForCausalLM(cfg).eval()
    state = llama.state_dict()
    for layer, idx in keep.items():
        prefix = f"model.layers.{layer}.mlp."
        idx = torch.from_numpy(idx)
        state[prefix + "gate_proj.weight"] = state[prefix + "gate_proj.weight"][idx]
        state[prefix + "up_proj.weight"] = state[prefix + "up_proj.weight"][idx]
        state[prefix + "down_proj.weight"] = state[prefix + "down_proj.weight"][:, idx]
    expected.load_state_dict(state)
    assert torch.allclose(logits(nas, ids), logits(expected, ids), atol=1e-5)
    assert nas.config.block_configs[0].ffn.ffn_mult == 6.0


def test_wider_ffn_keeps_the_function():
    llama = tiny_nas_llama(num_layers=2)
    nas = llama_to_nas(copy.deepcopy(llama))
    ids = token_batches(1)[0]
    narrow_ffn(nas, 1, 18.0, token_batches(1))
    assert nas.model.layers[1].mlp.down_proj.weight.shape == (HIDDEN, 768)
    assert torch.allclose(logits(nas, ids), logits(llama, ids), atol=1e-5)


def capture_io(module, attention: bool):
    pairs = []

    def hook(mod, args, kwargs, out):
        x = kwargs["hidden_states"] if attention else args[0]
        y = out[0] if attention else out
        pairs.append((x.detach().reshape(-1, HIDDEN), y.detach().reshape(-1, HIDDEN)))

    return pairs, module.register_forward_hook(hook, with_kwargs=True)


def numpy_fit(llama, layer: int, part: str, calib, ridge: float = 0.0) -> np.ndarray:
    """W [out, in] by numpy least squares on the parent's (norm(x), output) pairs."""
    block_ = llama.model.layers[layer]
    pairs, handle = capture_io(
        block_.self_attn if part == "attention" else block_.mlp, part == "attention"
    )
    for batch in calib:
        logits(llama, batch)
    handle.remove()
    x = torch.cat([p[0] for p in pairs]).double().numpy()
    y = torch.cat([p[1] for p in pairs]).double().numpy()
    if ridge == 0:
        return np.linalg.lstsq(x, y, rcond=None)[0].T
    gram = x.T @ x
    lam = ridge * np.trace(gram) / gram.shape[0]
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), x.T @ y).T


@pytest.mark.parametrize("ridge", [0.0, 0.01])
def test_linear_sub_blocks_are_least_squares_fits(ridge):
    llama = tiny_nas_llama()
    calib = token_batches(4, seq_len=24, seed=5)  # 288 tokens > 64 inputs
    want_attn = numpy_fit(llama, 1, "attention", calib, ridge)
    want_ffn = numpy_fit(llama, 2, "ffn", calib, ridge)
    nas = llama_to_nas(copy.deepcopy(llama))
    err_ffn = ffn_to_linear(nas, 2, calib, ridge=ridge)
    err_attn = attention_to_linear(nas, 1, calib, ridge=ridge)
    got_attn = nas.model.layers[1].self_attn.linear_attn.weight.detach().double().numpy()
    got_ffn = nas.model.layers[2].mlp.linear_mlp.weight.detach().double().numpy()
    scale = np.abs(want_attn).max()
    assert np.abs(got_attn - want_attn).max() < 1e-4 * scale
    assert np.abs(got_ffn - want_ffn).max() < 1e-4 * np.abs(want_ffn).max()
    assert 0 < err_attn < 1 and 0 < err_ffn < 1
    assert nas.config.block_configs[1].attention.replace_with_linear
    assert nas.config.block_configs[2].ffn.replace_with_linear


def zero_output(module, attention: bool):
    def hook(mod, args, kwargs, out):
        return (torch.zeros_like(out[0]), None) if attention else torch.zeros_like(out)

    return module.register_forward_hook(hook, with_kwargs=True)


def test_no_ops_equal_the_llama_with_those_outputs_zeroed():
    llama = tiny_nas_llama()
    nas = llama_to_nas(copy.deepcopy(llama))
    attention_no_op(nas, 1)
    ffn_no_op(nas, 2)
    attention_no_op(nas, 3)
    ffn_no_op(nas, 3)
    handles = [
        zero_output(llama.model.layers[1].self_attn, True),
        zero_output(llama.model.layers[2].mlp, False),
        zero_output(llama.model.layers[3].self_attn, True),
        zero_output(llama.model.layers[3].mlp, False),
    ]
    ids = token_batches(1)[0]
    expected = logits(llama, ids)
    for handle in handles:
        handle.remove()
    assert torch.allclose(logits(nas, ids), expected, atol=1e-5)
    names = set(nas.state_dict())
    assert not {n for n in names if n.startswith("model.layers.3.")}
    assert "model.layers.1.input_layernorm.weight" not in names
    assert "model.layers.2.post_attention_layernorm.weight" not in names


PLAN = [block(4, 6.0), block("linear", 12), block("no_op", "linear"), block(2, "no_op")]


def test_apply_block_configs_equals_the_edits_one_by_one():
    llama = tiny_nas_llama()
    calib, ids = token_batches(4, seq_len=24, seed=5), token_batches(1, seed=6)[0]
    applied = llama_to_nas(copy.deepcopy(llama))
    records = apply_block_configs(applied, PLAN, calib)
    # One by one, last layer first and FFN before attention, every edit sees parent inputs.
    by_hand = llama_to_nas(copy.deepcopy(llama))
    ffn_no_op(by_hand, 3)
    ffn_to_linear(by_hand, 2, calib)
    attention_no_op(by_hand, 2)
    attention_to_linear(by_hand, 1, calib)
    narrow_ffn(by_hand, 0, 6.0, calib)
    reduce_kv_heads(by_hand, 0, 4)
    assert torch.allclose(logits(applied, ids), logits(by_hand, ids), atol=1e-5)
    assert [b.to_dict() for b in applied.config.block_configs] == [
        b.to_dict() for b in by_hand.config.block_configs
    ]
    print(json.dumps(records, indent=1))
    assert [(r["attention"]["edit"], r["ffn"]["edit"]) for r in records] == [
        ("kv_heads", "resize"),
        ("linear", "keep"),
        ("no_op", "linear"),
        ("keep", "no_op"),
    ]
    assert records[0]["attention"] | {"init": ""} == {
        "edit": "kv_heads",
        "from": 4,
        "to": 2,
        "init": "",
    }
    assert (records[0]["ffn"]["from"], records[0]["ffn"]["to"]) == (512, 256)
    assert records[1]["attention"]["tokens"] == 4 * 3 * 24
    params = sum(p.numel() for p in applied.parameters())
    assert (
        count_parameters(applied.config)
        == params
        == sum(r["params_after"] for r in records) + (2 * 98 + 1) * HIDDEN
    )


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        (PLAN[:3], "3 block configs for a model with 4 layers"),
        ([block(3, 12)] + PLAN[1:], "n_heads_in_group 3 does not divide 8"),
        ([block(2, 12) | {"extra": 1}] + PLAN[1:], "unknown key 'extra'"),
    ],
)
def test_bad_plans_are_refused_before_any_edit(blocks, message):
    nas = llama_to_nas(tiny_nas_llama())
    before = copy.deepcopy(nas.state_dict())
    with pytest.raises(MinitronError, match=message):
        apply_block_configs(nas, blocks, token_batches(1))
    assert nas.state_dict().keys() == before.keys()


def test_edits_that_have_nothing_to_start_from_are_refused():
    nas = llama_to_nas(tiny_nas_llama())
    apply_block_configs(nas, [block("no_op", "no_op")] + PLAN[1:], token_batches(1))
    with pytest.raises(MinitronError, match="layer 0: cannot make attention attention from no_op"):
        apply_block_configs(nas, [block(2, "no_op")] + PLAN[1:], token_batches(1))
    with pytest.raises(MinitronError, match="layer 0: cannot make a linear FFN from no_op"):
        apply_block_configs(nas, [block("no_op", "linear")] + PLAN[1:], token_batches(1))
    with pytest.raises(MinitronError, match="layer 7 out of range"):
        attention_no_op(nas, 7)
    with pytest.raises(MinitronError, match="need a nemotron-nas model"):
        reduce_kv_heads(tiny_nas_llama(), 0, 4)

"""The edits' initialisations matter, on the real embedded model (SmolLM2-135M) and held-out text.

Each test prints both held-out perplexities of its pair. Kept short on 2 cores:
1024 calibration tokens (512 for FFN channels), 512 held-out tokens, one model copy per variant.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from minitron.config import DataConfig
from minitron.data import batches, load_text_data
from minitron.io import load_model
from minitron.modeling import AttentionConfig, intermediate_size_to_ffn_mult, llama_to_nas
from minitron.nas import apply_block_configs, reduce_kv_heads, resize_ffn, set_linear_attention
from minitron.nas.calibrate import RIDGE
from tests.nas_helpers import single_thread

pytestmark = pytest.mark.slow
one_thread = pytest.fixture(autouse=True)(single_thread)


@pytest.fixture(scope="module")
def setup():
    model, tokenizer = load_model("smollm2-135m", dtype="float32", device="cpu")
    data = load_text_data(DataConfig(samples=8, heldout=4, seq_len=128), tokenizer)
    nas = llama_to_nas(model)
    return nas, batches(data.calibration, 4), batches(data.heldout, 2)


@torch.no_grad()
def heldout_ppl(model, held) -> float:
    losses = [float(model(input_ids=ids, labels=ids).loss) for ids in held]
    return math.exp(sum(losses) / len(losses))


def edit_blocks(model, layers, **changes):
    """The model's block list with ``changes`` (attention=..., ffn=...) on ``layers``."""
    out = []
    for i, block in enumerate(model.config.block_configs):
        if i in layers:
            block = replace(block, **{k: f(block) for k, f in changes.items()})
        out.append(block)
    return out


def test_mean_kv_heads_beat_one_parent_head_per_group(setup):
    nas, calib, held = setup
    layers = range(1, 30, 2)  # 15 layers, 3 KV heads -> 1
    mean = copy.deepcopy(nas)
    plan = edit_blocks(mean, layers, attention=lambda b: replace(b.attention, n_heads_in_group=9))
    apply_block_configs(mean, plan, calib)
    first = copy.deepcopy(nas)
    for i in layers:
        parent = first.model.layers[i].self_attn
        k, v = parent.k_proj.weight.detach().clone(), parent.v_proj.weight.detach().clone()
        reduce_kv_heads(first, i, 9)
        with torch.no_grad():  # keep parent head 0 (rows 0..63) instead of the mean
            first.model.layers[i].self_attn.k_proj.weight.copy_(k[:64])
            first.model.layers[i].self_attn.v_proj.weight.copy_(v[:64])
    p_mean, p_first = heldout_ppl(mean, held), heldout_ppl(first, held)
    print(f"KV heads 3->1 in 15 layers: mean-init ppl {p_mean:.2f}, first-parent ppl {p_first:.2f}")
    assert p_mean < p_first


def test_activation_ranked_ffn_channels_beat_the_first_k(setup):
    nas, calib, held = setup
    mult = intermediate_size_to_ffn_mult(1024, 576)  # 1536 -> 1024 in every layer
    ranked = copy.deepcopy(nas)
    records = apply_block_configs(
        ranked,
        edit_blocks(ranked, range(30), ffn=lambda b: replace(b.ffn, ffn_mult=mult)),
        calib[:1],
    )
    assert {(r["ffn"]["from"], r["ffn"]["to"]) for r in records} == {(1536, 1024)}
    first_k = copy.deepcopy(nas)
    for i in range(30):  # a falling score keeps channels 0..1023
        resize_ffn(first_k, i, mult, torch.arange(1536, 0, -1, dtype=torch.float64))
    p_ranked, p_first = heldout_ppl(ranked, held), heldout_ppl(first_k, held)
    print(
        f"FFN 1536->1024 in 30 layers: activation-ranked ppl {p_ranked:.2f}, first-k {p_first:.2f}"
    )
    assert p_ranked < p_first


def test_least_squares_linear_attention_beats_identity_and_no_op(setup):
    nas, calib, held = setup
    layers = range(8, 16)
    fitted = copy.deepcopy(nas)
    linear = AttentionConfig(replace_with_linear=True)
    records = apply_block_configs(
        fitted, edit_blocks(fitted, layers, attention=lambda b: linear), calib
    )
    errors = [r["attention"]["relative_error"] for r in records if r["layer"] in layers]
    assert all(0 < e < 1 for e in errors)
    identity = copy.deepcopy(nas)
    for i in layers:
        set_linear_attention(identity, i, torch.eye(576))  # x + norm(x)
    no_op = copy.deepcopy(nas)
    plan = edit_blocks(no_op, layers, attention=lambda b: AttentionConfig(no_op=True))
    apply_block_configs(no_op, plan, [])
    p_fit, p_id, p_no, p_parent = (heldout_ppl(m, held) for m in (fitted, identity, no_op, nas))
    print(
        f"attention -> linear in layers 8-15: least-squares (ridge {RIDGE}) ppl {p_fit:.2f}, "
        f"identity W=I ppl {p_id:.2f}, no_op ppl {p_no:.2f} (parent {p_parent:.2f})"
    )
    assert p_fit < p_id and p_fit < p_no

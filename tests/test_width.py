"""Width importance and width slicing against slow references written apart from the code."""

from __future__ import annotations

import math

import pytest
import torch

from minitron.errors import MinitronError
from minitron.importance.width import WidthScores, width_importance
from minitron.prune.width import (
    WidthPlan,
    WidthShape,
    check_shape,
    first_k_plan,
    plan_width,
    random_plan,
    requested_shape,
    select_heads,
    slice_model,
)
from tests.conftest import random_batches, tiny_llama

LAYERS = 3


def _llama(**overrides):
    return tiny_llama(LAYERS, **overrides)


def _capture(model, ids):
    """Every activation the importance reads, whole, for one sequence ``[1, T]``."""
    seen = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        for name in ("input_layernorm", "post_attention_layernorm"):
            module = getattr(layer, name)
            handles.append(
                module.register_forward_hook(
                    lambda _m, _a, out, key=(name, i): seen.__setitem__(key, out[0].clone())
                )
            )
        for name, module in (("o_in", layer.self_attn.o_proj), ("down_in", layer.mlp.down_proj)):
            handles.append(
                module.register_forward_pre_hook(
                    lambda _m, args, key=(name, i): seen.__setitem__(key, args[0][0].clone())
                )
            )
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    return seen


def _slow_width_scores(model, batches):
    """The paper's formulas with Python loops, one sequence at a time."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    sequences = [seq[None] for batch in batches for seq in batch]
    captured = [_capture(model, ids) for ids in sequences]

    def aggregate(values_per_sequence):  # [S][T] -> sqrt(sum_s mean_t |x|^2)
        return math.sqrt(sum((sum(map(abs, v)) / len(v)) ** 2 for v in values_per_sequence))

    hidden = []
    for c in range(config.hidden_size):
        total = 0.0
        for i in range(LAYERS):
            for name in ("input_layernorm", "post_attention_layernorm"):
                total += aggregate([[float(x) for x in cap[(name, i)][:, c]] for cap in captured])
        hidden.append(total)
    heads, neurons = [], []
    for i in range(LAYERS):
        row = []
        for h in range(config.num_attention_heads):
            per_seq = []
            for cap in captured:
                o_in = cap[("o_in", i)]
                per_seq.append(
                    [
                        float(o_in[t, h * head_dim : (h + 1) * head_dim].norm())
                        for t in range(len(o_in))
                    ]
                )
            row.append(aggregate(per_seq))
        heads.append(row)
        neurons.append(
            [
                aggregate([[float(x) for x in cap[("down_in", i)][:, n]] for cap in captured])
                for n in range(config.intermediate_size)
            ]
        )
    return hidden, heads, neurons


def test_width_importance_matches_a_slow_loop_over_sequences():
    model = _llama()
    batches = random_batches(count=2, batch=3, seq_len=10)
    scores = width_importance(model, batches)
    hidden, heads, neurons = _slow_width_scores(model, batches)
    assert scores.hidden == pytest.approx(hidden, rel=1e-5)
    assert scores.heads == [pytest.approx(row, rel=1e-5) for row in heads]
    assert scores.neurons == [pytest.approx(row, rel=1e-5) for row in neurons]
    assert scores.num_key_value_heads == [2] * LAYERS
    assert (scores.sequences, scores.tokens) == (6, 60)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_dead_units_score_zero():
    model = _llama()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[5] = 0  # neuron 5 of layer 1 is always 0
        for layer in model.model.layers:  # embedding channel 7 is 0 after every norm
            layer.input_layernorm.weight[7] = 0
            layer.post_attention_layernorm.weight[7] = 0
        model.model.layers[2].self_attn.v_proj.weight[:8] = 0  # K/V head 0 -> heads 0, 1 output 0
    scores = width_importance(model, random_batches())
    assert scores.neurons[1][5] == 0 and min(scores.neurons[0]) > 0
    assert scores.hidden[7] == 0 and sorted(scores.hidden)[1] > 0
    assert scores.heads[2][:2] == [0, 0] and min(scores.heads[2][2:]) > 0


def test_scores_round_trip_and_reject_other_records():
    scores = width_importance(_llama(), random_batches(count=1))
    assert WidthScores.from_dict(scores.to_dict()).heads == scores.heads
    with pytest.raises(MinitronError, match="not width scores"):
        WidthScores.from_dict({"metric": "loss"})


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_word_embeddings": True}, {"attention_bias": True, "mlp_bias": True}],
    ids=["untied", "tied", "biases"],
)
def test_keeping_everything_in_any_consistent_order_gives_the_parents_logits(overrides):
    model = _llama(**overrides)
    if overrides.get("attention_bias"):
        with torch.no_grad():  # biases start at zero: make them matter
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.3)
    g = torch.Generator().manual_seed(3)

    def perm(n):
        return torch.randperm(n, generator=g).tolist()

    groups = [perm(2) for _ in range(LAYERS)]
    plan = WidthPlan(
        layers=list(range(LAYERS)),
        hidden=perm(32),
        heads=[[2 * k + h for k in kv for h in perm(2)] for kv in groups],
        kv_heads=groups,
        neurons=[perm(64) for _ in range(LAYERS)],
    )
    pruned = slice_model(model, plan)
    ids = random_batches(count=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    assert pruned.config.head_dim == 8
    assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters())


def _slow_slice(model, plan):
    """The pruned state dict, element by element, from the parent's (no index tensors)."""
    config = model.config
    hd = config.hidden_size // config.num_attention_heads
    parent = model.state_dict()

    def build(source, rows, cols):
        out = torch.empty(len(rows), len(cols)) if cols is not None else torch.empty(len(rows))
        for r, row in enumerate(rows):
            if cols is None:
                out[r] = source[row]
            else:
                for c, col in enumerate(cols):
                    out[r, c] = source[row, col]
        return out

    vocab = list(range(config.vocab_size))
    state = {
        "model.embed_tokens.weight": build(parent["model.embed_tokens.weight"], vocab, plan.hidden),
        "lm_head.weight": build(parent["lm_head.weight"], vocab, plan.hidden),
        "model.norm.weight": build(parent["model.norm.weight"], plan.hidden, None),
    }
    for new, old in enumerate(plan.layers):
        q = [h * hd + d for h in plan.heads[new] for d in range(hd)]
        kv = [h * hd + d for h in plan.kv_heads[new] for d in range(hd)]
        n = plan.neurons[new]

        def src(name, old=old):
            return parent[f"model.layers.{old}.{name}"]

        p = f"model.layers.{new}."
        state |= {
            p + "input_layernorm.weight": build(src("input_layernorm.weight"), plan.hidden, None),
            p + "post_attention_layernorm.weight": build(
                src("post_attention_layernorm.weight"), plan.hidden, None
            ),
            p + "self_attn.q_proj.weight": build(src("self_attn.q_proj.weight"), q, plan.hidden),
            p + "self_attn.k_proj.weight": build(src("self_attn.k_proj.weight"), kv, plan.hidden),
            p + "self_attn.v_proj.weight": build(src("self_attn.v_proj.weight"), kv, plan.hidden),
            p + "self_attn.o_proj.weight": build(src("self_attn.o_proj.weight"), plan.hidden, q),
            p + "mlp.gate_proj.weight": build(src("mlp.gate_proj.weight"), n, plan.hidden),
            p + "mlp.up_proj.weight": build(src("mlp.up_proj.weight"), n, plan.hidden),
            p + "mlp.down_proj.weight": build(src("mlp.down_proj.weight"), plan.hidden, n),
        }
    return state


def test_slicing_equals_a_slow_element_by_element_copy():
    model = tiny_llama(5)
    scores = width_importance(model, random_batches())
    scores = WidthScores(  # layers 1 and 3 dropped: score only the kept ones
        scores.hidden, [scores.heads[i] for i in (0, 2, 4)],
        [scores.neurons[i] for i in (0, 2, 4)], [2, 2, 2],
    )  # fmt: skip
    shape = WidthShape(
        hidden_size=24, intermediate_size=40, num_attention_heads=2, num_key_value_heads=1
    )
    plan = plan_width(scores, shape, layers=[0, 2, 4])
    pruned = slice_model(model, plan)
    expected = _slow_slice(model, plan)
    got = pruned.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    config = pruned.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (3, 24, 40)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 8)
    assert model.config.hidden_size == 32 and len(model.model.layers) == 5  # parent unchanged


def _zeroed(model, heads=None, neurons=None):
    """The parent with the dropped heads' o_proj columns or neurons' down_proj columns zeroed."""
    import copy

    twin = copy.deepcopy(model)
    hd = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for i, layer in enumerate(twin.model.layers):
            if heads is not None:
                for h in range(model.config.num_attention_heads):
                    if h not in heads[i]:
                        layer.self_attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
            if neurons is not None:
                for n in range(model.config.intermediate_size):
                    if n not in neurons[i]:
                        layer.mlp.down_proj.weight[:, n] = 0
    return twin


@pytest.mark.parametrize("heads, kv", [(2, 2), (2, 1)], ids=["fewer-per-group", "whole-groups"])
def test_removing_heads_equals_silencing_them(heads, kv):
    """Cutting heads (hidden kept) gives the parent with those heads' outputs zeroed: the
    kept query heads still read their own K/V heads (GQA stays valid)."""
    model = _llama()
    scores = width_importance(model, random_batches())
    plan = plan_width(scores, WidthShape(32, 64, heads, kv))
    for row, groups in zip(plan.heads, plan.kv_heads, strict=True):
        assert sorted({h // 2 for h in row}) == groups and len(row) == heads
    pruned = slice_model(model, plan)
    twin = _zeroed(model, heads=plan.heads)
    ids = random_batches(count=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, twin(ids).logits, rtol=1e-5, atol=1e-5)


def test_removing_neurons_equals_silencing_them():
    model = _llama()
    scores = width_importance(model, random_batches())
    plan = plan_width(scores, WidthShape(32, 40, 4, 2))
    twin = _zeroed(model, neurons=plan.neurons)
    ids = random_batches(count=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(
            slice_model(model, plan)(ids).logits, twin(ids).logits, rtol=1e-5, atol=1e-5
        )


def test_plan_keeps_the_top_scored_units():
    scores = WidthScores(
        hidden=[5.0, 1.0, 4.0, 2.0],
        heads=[[1.0, 9.0, 3.0, 4.0, 0.5, 0.1]],  # 3 K/V heads of 2
        neurons=[[0.1, 0.3, 0.2]],
        num_key_value_heads=[3],
    )
    plan = plan_width(scores, WidthShape(2, 2, 2, 2), layers=[0])
    assert plan.hidden == [0, 2] and plan.neurons == [[1, 2]]
    # one head per group: group 0 keeps head 1 (9.0), group 1 head 3 (4.0), group 2 head 4;
    # the groups ranked by their kept head: 0 (9.0) and 1 (4.0)
    assert plan.heads == [[1, 3]] and plan.kv_heads == [[0, 1]]
    assert select_heads([1, 9, 3, 4, 0.5, 0.1], 3, 4, 2) == ([0, 1, 2, 3], [0, 1])


def test_requested_shape_defaults_and_checks():
    config = tiny_llama(1).config  # hidden 32, 4 heads over 2 K/V heads, head_dim 8
    assert requested_shape(config, num_attention_heads=2) == WidthShape(32, 64, 2, 2)
    assert (
        requested_shape(config, num_attention_heads=2, num_key_value_heads=1).num_key_value_heads
        == 1
    )
    check_shape(config, WidthShape(24, 48, 2, 1))
    check_shape(config, WidthShape(20, 48, 4, 2))  # head_dim stays 8: 20 != 4 * 8 is fine
    bad = [
        (WidthShape(30, 64, 4, 2), "hidden_size 30 is not a multiple of num_attention_heads 4"),
        (WidthShape(32, 64, 6, 2), "num_attention_heads 6 is more than the parent's 4"),
        (WidthShape(32, 128, 4, 2), "intermediate_size 128 is more than the parent's 64"),
        (WidthShape(32, 64, 3, 2), "does not split evenly"),
        (WidthShape(32, 64, 4, 1), "4 per group, but the parent's groups have 2"),
        (WidthShape(0, 64, 4, 2), "hidden_size must be a positive integer"),
    ]
    for shape, message in bad:
        with pytest.raises(MinitronError, match=message):
            check_shape(config, shape)


def test_baseline_plans_have_the_shape():
    config = tiny_llama(LAYERS).config
    shape = WidthShape(16, 32, 2, 1)
    for plan in (
        first_k_plan(config, shape, range(LAYERS)),
        random_plan(config, shape, range(LAYERS), torch.Generator().manual_seed(0)),
    ):
        pruned = slice_model(_llama(), plan)
        assert (pruned.config.hidden_size, pruned.config.num_key_value_heads) == (16, 1)

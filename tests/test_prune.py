"""Depth pruning on tiny random Llamas: exact logits, renumbering, saved checkpoints."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from minitron.commands.prune import PruneConfig, dry_run, run_prune
from minitron.config import parse_config
from minitron.errors import MinitronError
from minitron.importance import ImportanceResult, compute_importance
from minitron.prune import count_parameters, drop_layers, plan_depth
from tests.conftest import VOCAB, random_batches, save_tiny_checkpoint, tiny_llama

IDS = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def prune_config(parent, **values):
    small_data = {"samples": 4, "heldout": 2, "seq_len": 16, "batch_size": 2}
    return parse_config(PruneConfig, {"parent": str(parent), "data": small_data} | values)


def test_dropping_nothing_keeps_logits_exactly(model):
    pruned = copy.deepcopy(model)
    assert drop_layers(pruned, []) == list(range(6))
    assert torch.equal(logits(pruned), logits(model))


@pytest.mark.parametrize("k", range(6))
def test_dropping_layer_equals_skipping_it(model, k):
    pruned = copy.deepcopy(model)
    drop_layers(pruned, [k])
    # The parent with layer k turned into the identity on the residual stream.
    handle = model.model.layers[k].register_forward_hook(
        lambda _m, args, kwargs, _out: args[0] if args else kwargs["hidden_states"],
        with_kwargs=True,
    )
    try:
        skipped = logits(model)
    finally:
        handle.remove()
    assert torch.equal(logits(pruned), skipped)
    assert not torch.equal(skipped, logits(model))  # the layer did matter


def test_drop_renumbers_attention_and_config(model):
    kept = drop_layers(model, [0, 2, 3])
    assert kept == [1, 4, 5]
    assert model.config.num_hidden_layers == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]


def test_drop_subsets_layer_types():
    model = tiny_llama()
    model.config.layer_types = [f"t{i}" for i in range(6)]
    drop_layers(model, [1, 2])
    assert model.config.layer_types == ["t0", "t3", "t4", "t5"]


def test_drop_updates_every_per_layer_config_field(tmp_path):
    model = tiny_llama(
        no_rope_layers=[1, 0, 1, 1, 0, 1],
        mlp_only_layers=[1, 4],
        layers_block_type=["a", "b", "c", "d", "e", "f"],
    )
    drop_layers(model, [1, 2])
    config = model.config
    assert config.no_rope_layers == [1, 1, 0, 1]
    assert config.layers_block_type == ["a", "d", "e", "f"]
    assert config.mlp_only_layers == [2]  # parent layer 4 is now layer 2; layer 1 is gone
    model.save_pretrained(tmp_path / "out")
    reloaded = type(config).from_pretrained(tmp_path / "out")
    assert reloaded.no_rope_layers == [1, 1, 0, 1] and reloaded.num_hidden_layers == 4


@pytest.mark.parametrize(
    ("field", "value"),
    [("decoder_sparse_step", 2), ("cross_attention_layers_map", [0, 3]), ("attn_layer_period", 3)],
)
def test_drop_refuses_per_layer_structure_it_does_not_understand(field, value, tmp_path):
    model = tiny_llama(**{field: value})
    with pytest.raises(MinitronError, match=field):
        drop_layers(model, [1])
    assert len(model.model.layers) == 6 and model.config.num_hidden_layers == 6
    model.config.save_pretrained(tmp_path / "config-only")
    with pytest.raises(MinitronError, match=field):  # refused from the config alone
        dry_run(PruneConfig(parent=str(tmp_path / "config-only"), drop_layers=[1]))


@pytest.mark.parametrize("bad", [[6], [-1], [0, 1, 2, 3, 4, 5]])
def test_drop_rejects_bad_indices(model, bad):
    with pytest.raises(MinitronError):
        drop_layers(model, bad)
    assert len(model.model.layers) == 6  # untouched on error


def test_parameter_count_after_drop(model):
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    before = count_parameters(model)
    drop_layers(model, [1, 4])
    assert count_parameters(model) == before - 2 * per_layer


def test_identity_prune_roundtrip_reproduces_parent_logits(tiny_checkpoint, tmp_path):
    config = prune_config(tiny_checkpoint, drop_layers=[], perplexity=False)
    record = run_prune(config, tmp_path / "out")
    assert record["kept_layers"] == list(range(6)) and record["dropped_layers"] == []
    parent = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    child = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(logits(child), logits(parent))


def test_saved_checkpoint_reloads_and_generates_with_cache(tiny_checkpoint, tmp_path):
    config = prune_config(tiny_checkpoint, drop_layers=[1, 3], target_layers=4)
    record = run_prune(config, tmp_path / "out")
    out = tmp_path / "out"
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_hidden_layers"] == 4
    assert saved["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((out / "prune.json").read_text())["kept_layers"] == [0, 2, 4, 5]
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert record["perplexity_after"] > 0 and record["perplexity_before"] > 0

    child = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = tiny_llama()
    drop_layers(reference, [1, 3])
    assert torch.equal(logits(child), logits(reference))
    prompt = IDS[:1, :5]
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=1, eos_token_id=None)
    with_cache = child.generate(prompt, use_cache=True, **kwargs)
    without_cache = child.generate(prompt, use_cache=False, **kwargs)
    assert with_cache.shape[1] == 17
    assert torch.equal(with_cache, without_cache)


def test_contiguous_method_drops_least_important_block(tiny_checkpoint, tmp_path):
    config = prune_config(tiny_checkpoint, target_layers=4, method="contiguous", metric="loss")
    record = run_prune(config, tmp_path / "out")
    scores = record["scores"]["blocks"]
    start = min(range(len(scores)), key=scores.__getitem__)
    assert record["dropped_layers"] == [start, start + 1]
    assert record["scores"]["block_size"] == 2
    # The scores are those of the parent on the same calibration data.
    from minitron.data import batches, load_text_data
    from minitron.io import load_model

    parent, tokenizer = load_model(str(tiny_checkpoint))
    data = load_text_data(config.data, tokenizer)
    direct = compute_importance(parent, batches(data.calibration, 2), "loss", 2)
    assert scores == pytest.approx(direct.blocks, abs=1e-6)


def test_saved_in_parent_dtype(tmp_path):
    parent = save_tiny_checkpoint(tmp_path / "bf16-parent", dtype=torch.bfloat16)
    assert stored_dtypes(parent / "model.safetensors") == {torch.bfloat16}
    config = prune_config(parent, drop_layers=[0], dtype="float32")
    record = run_prune(config, tmp_path / "out")
    assert record["perplexity_after"] > 0  # computed in float32
    assert stored_dtypes(tmp_path / "out" / "model.safetensors") == {torch.bfloat16}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


def stored_dtypes(path):
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        return {handle.get_tensor(name).dtype for name in handle.keys()}  # noqa: SIM118


def scores(block_size, layers, blocks):
    return ImportanceResult("bi", len(layers), block_size, layers, blocks)


def test_plan_contiguous_and_individual():
    result = scores(2, [0.9, 0.1, 0.8, 0.2, 0.7], [0.5, 0.4, 0.3, 0.6])
    contiguous = PruneConfig(parent="p", target_layers=3, method="contiguous", metric="bi")
    plan = plan_depth(contiguous, 5, result)
    assert plan.dropped == [2, 3] and plan.kept == [0, 1, 4]
    individual = PruneConfig(parent="p", target_layers=3, method="individual", metric="bi")
    assert plan_depth(individual, 5, result).dropped == [1, 3]


def test_plan_errors():
    with pytest.raises(MinitronError, match="target_layers \\(5\\) must be below"):
        plan_depth(PruneConfig(parent="p", target_layers=5), 5)
    with pytest.raises(MinitronError, match="leaves 3"):
        plan_depth(PruneConfig(parent="p", drop_layers=[0, 1], target_layers=4), 5)
    with pytest.raises(MinitronError, match="needs importance scores"):
        plan_depth(PruneConfig(parent="p", target_layers=3), 5)


def test_dry_run_needs_only_config(tmp_path):
    folder = tmp_path / "config-only"
    folder.mkdir()
    tiny_llama().config.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    report = dry_run(PruneConfig(parent=str(folder), drop_layers=[2, 3]))
    per_layer = sum(p.numel() for p in tiny_llama().model.layers[0].parameters())
    assert report["params_before"] == count_parameters(tiny_llama())
    assert report["params_after"] == report["params_before"] - 2 * per_layer
    assert report["kept_layers"] == [0, 1, 4, 5]
    method = dry_run(PruneConfig(parent=str(folder), target_layers=4))
    assert method["kept_layers"] is None and method["params_after"] == report["params_after"]


def test_dry_run_uses_scores_file(tmp_path, model):
    folder = tmp_path / "config-only"
    model.config.save_pretrained(folder)
    result = compute_importance(model, random_batches(), "bi", 2)
    record = result.to_dict() | {"model": str(folder)}
    (tmp_path / "scores.json").write_text(json.dumps(record))
    config = PruneConfig(
        parent=str(folder), target_layers=4, metric="bi", scores=str(tmp_path / "scores.json")
    )
    start = result.least_important_block()
    assert dry_run(config)["dropped_layers"] == [start, start + 1]
    wrong = PruneConfig(parent=str(folder), target_layers=3, metric="bi", scores=config.scores)
    with pytest.raises(MinitronError, match="needs blocks of 3"):
        dry_run(wrong)
    other_metric = PruneConfig(parent=str(folder), target_layers=4, scores=config.scores)
    with pytest.raises(MinitronError, match="metric 'bi'"):
        dry_run(other_metric)


def test_llama_3_1_8b_minitron_4b_depth_numbers():
    config = parse_config(
        PruneConfig,
        {"parent": "tests/fixtures/llama-3.1-8b", "drop_layers": list(range(15, 31))},
    )
    report = dry_run(config)
    assert report["params_before"] == 8_030_261_248
    assert report["params_after"] == 4_540_469_248
    assert report["dropped_layers"] == list(range(15, 31))
    assert report["kept_layers"] == [*range(15), 31]


def test_dropping_one_layer_uses_single_layer_scores():
    # A scores file with blocks of 3 must not make a 6 -> 5 prune drop three layers.
    result = scores(3, [0.9, 0.5, 0.1, 0.8, 0.7, 0.6], [0.4, 0.3, 0.2, 0.5])
    config = PruneConfig(parent="p", target_layers=5, method="contiguous", metric="bi")
    plan = plan_depth(config, 6, result)
    assert plan.dropped == [2] and len(plan.kept) == 5


def test_block_size_mismatch_is_an_error():
    result = scores(3, [0.9, 0.5, 0.1, 0.8, 0.7, 0.6], [0.4, 0.3, 0.2, 0.5])
    config = PruneConfig(parent="p", target_layers=4, method="contiguous", metric="bi")
    with pytest.raises(MinitronError, match="needs blocks of 2"):
        plan_depth(config, 6, result)


@pytest.mark.parametrize(
    "content", ["[1, 2]", "{}", '{"metric": "bi", "num_layers": 6, "block_size": 2}', "{bad"]
)
def test_malformed_scores_file(tmp_path, model, content):
    folder = tmp_path / "config-only"
    model.config.save_pretrained(folder)
    (tmp_path / "scores.json").write_text(content)
    config = PruneConfig(
        parent=str(folder), target_layers=4, metric="bi", scores=str(tmp_path / "scores.json")
    )
    with pytest.raises(MinitronError, match="not a scores.json"):
        dry_run(config)


def write_scores(tmp_path, parent, **changes):
    """A config-only parent folder and a scores.json for it, with ``changes``."""
    folder = tmp_path / "config-only"
    parent.config.save_pretrained(folder)
    record = compute_importance(parent, random_batches(), "bi", 2).to_dict()
    record |= {"model": str(folder)} | changes
    (tmp_path / "scores.json").write_text(json.dumps(record))
    return PruneConfig(
        parent=str(folder), target_layers=4, metric="bi", scores=str(tmp_path / "scores.json")
    )


@pytest.mark.parametrize(
    "change",
    [{"num_layers": "6"}, {"block_size": 2.5}, {"layers": ["x"] * 6}, {"blocks": None},
     {"tokens": "many"}, {"baseline_loss": "low"}, {"metric": 3}],
)  # fmt: skip
def test_scores_file_with_wrong_types_is_one_error(tmp_path, model, change):
    config = write_scores(tmp_path, model, **change)
    with pytest.raises(MinitronError, match="not a scores.json"):
        dry_run(config)


def test_scores_file_must_be_for_the_same_parent(tmp_path, model):
    other = tmp_path / "other-model"
    model.config.save_pretrained(other)
    config = write_scores(tmp_path, model, model=str(other))
    with pytest.raises(MinitronError, match="scores were computed for .*other-model"):
        dry_run(config)
    same = write_scores(tmp_path, model, model_identity=str((tmp_path / "config-only").resolve()))
    assert dry_run(same)["layers_after"] == 4


def test_scores_with_drop_layers_is_an_error():
    with pytest.raises(MinitronError, match="only used with a method"):
        PruneConfig(parent="p", drop_layers=[1], scores="s.json")


def test_bf16_compute_saves_the_parents_exact_float32_weights(tiny_checkpoint, tmp_path):
    config = prune_config(tiny_checkpoint, drop_layers=[2], dtype="bfloat16")
    record = run_prune(config, tmp_path / "out")
    assert record["perplexity_after"] > 0  # computed in bfloat16
    parent = tiny_llama()
    drop_layers(parent, [2])
    child = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert stored_dtypes(tmp_path / "out" / "model.safetensors") == {torch.float32}
    expected = parent.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in child.state_dict().items())


def test_output_cannot_hold_the_parent(tiny_checkpoint):
    config = prune_config(tiny_checkpoint, drop_layers=[1], perplexity=False)
    with pytest.raises(MinitronError, match="would replace the input"):
        run_prune(config, tiny_checkpoint.parent, overwrite=True)
    assert (tiny_checkpoint / "config.json").is_file()


def test_failure_while_saving_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def broken_save(self, folder, *args, **kwargs):
        (Path(folder) / "partial.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", broken_save)
    config = prune_config(tiny_checkpoint, drop_layers=[1], perplexity=False)
    with pytest.raises(OSError, match="disk full"):
        run_prune(config, tmp_path / "runs" / "out")
    assert not (tmp_path / "runs").exists()

"""Task-scored importance against a slow loop over physically pruned copies."""

from __future__ import annotations

import copy

import pytest
import torch

from minitron.importance.task import task_importance
from minitron.prune import drop_layers, layers_removed
from tests.conftest import random_batches, tiny_llama
from tests.nas_helpers import MIXED, nas_from_kept, tiny_nas


def next_token_accuracy(batch: torch.Tensor):
    """A tiny graded task: mean probability the model gives the next token of ``batch``."""

    @torch.no_grad()
    def score(model) -> float:
        probs = model(input_ids=batch).logits[:, :-1].softmax(-1)  # [B, T-1, V]
        return probs.gather(-1, batch[:, 1:, None]).mean().item()

    return score


def test_layers_removed_restores_the_model_exactly():
    model = tiny_llama(no_rope_layers=[1, 0, 1, 1, 0, 1])
    (ids,) = random_batches(count=1)
    before = model(input_ids=ids).logits
    config_before = model.config.to_dict()
    with layers_removed(model, [1, 2]) as kept:
        assert kept == [0, 3, 4, 5] and model.config.no_rope_layers == [1, 1, 0, 1]
        reference = copy.deepcopy(model)
    pruned = tiny_llama(no_rope_layers=[1, 0, 1, 1, 0, 1])
    drop_layers(pruned, [1, 2])
    torch.testing.assert_close(reference(input_ids=ids).logits, pruned(input_ids=ids).logits)
    assert torch.equal(model(input_ids=ids).logits, before)
    assert model.config.to_dict() == config_before
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(6))


@pytest.mark.parametrize("block_size", [1, 2])
def test_task_scores_rank_blocks_as_a_slow_reference(block_size):
    model = tiny_llama()
    (batch,) = random_batches(count=1, batch=4, seq_len=24, seed=3)
    score = next_token_accuracy(batch)
    result = task_importance(model, score, "next-token", block_size)

    def reference(removed) -> float:
        pruned = copy.deepcopy(model)
        drop_layers(pruned, removed)
        return 1.0 - score(pruned)

    blocks = [reference(range(s, s + block_size)) for s in range(6 - block_size + 1)]
    assert result.blocks == pytest.approx(blocks, abs=1e-9)
    assert max(blocks) - min(blocks) > 1e-4  # the candidates really differ
    assert result.layers == pytest.approx([reference([i]) for i in range(6)], abs=1e-9)
    assert result.baseline_loss == pytest.approx(1.0 - score(model))
    order = sorted(range(len(blocks)), key=blocks.__getitem__)
    assert result.least_important_block() == order[0]
    assert result.metric == "task:next-token"


@pytest.mark.parametrize("block_size", [1, 3])
def test_task_scores_of_a_nemotron_nas_model_match_models_built_without_each_block(block_size):
    model = tiny_nas()  # every attention and FFN kind
    before = model.config.to_dict()
    (batch,) = random_batches(count=1, batch=4, seq_len=24, seed=3)
    score = next_token_accuracy(batch)
    result = task_importance(model, score, "next-token", block_size)
    layers = len(MIXED)

    def reference(removed) -> float:  # built from the kept blocks, not by drop_layers
        return 1.0 - score(nas_from_kept(model, [i for i in range(layers) if i not in removed]))

    blocks = [reference(range(s, s + block_size)) for s in range(layers - block_size + 1)]
    assert result.blocks == pytest.approx(blocks, abs=1e-9)
    assert max(blocks) - min(blocks) > 1e-4
    assert result.layers == pytest.approx([reference([i]) for i in range(layers)], abs=1e-9)
    assert result.baseline_loss == pytest.approx(1.0 - score(model))
    assert model.config.to_dict() == before and len(model.model.layers) == layers


def write_tiny_task(folder, items: int = 20, seed: int = 0):
    """A local multiple-choice task (YAML + jsonl) over random printable strings."""
    import json
    import random

    rng = random.Random(seed)
    letters = "abcdefghij "
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "tiny.jsonl", "w") as handle:
        for _ in range(items):
            context = "".join(rng.choice(letters) for _ in range(12))
            choices = ["".join(rng.choice(letters) for _ in range(4)) for _ in range(3)]
            handle.write(json.dumps({"context": context, "choices": choices, "gold": 0}) + "\n")
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: tiny.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: context\n"
        "doc_to_choice: choices\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n"
        "    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n"
    )
    return folder


@pytest.mark.slow  # lm-eval over 11 model variants: ~20 s on an idle 2-core machine
def test_task_metric_through_lm_eval_matches_a_slow_reference_loop(tmp_path):
    from minitron.commands.importance import TaskScoring, score_layers
    from minitron.eval import evaluate_tasks
    from tests.conftest import char_tokenizer

    folder = write_tiny_task(tmp_path / "tasks")
    model, tokenizer = tiny_llama(), char_tokenizer()
    task = TaskScoring(include_path=str(folder))
    result = score_layers(model, tokenizer, "task:tiny_mc", [], 2, single_layers=False, task=task)

    def reference(removed) -> float:  # a physically pruned copy, scored from scratch
        pruned = copy.deepcopy(model)
        drop_layers(pruned, removed)
        return (
            1.0 - evaluate_tasks(pruned, tokenizer, ["tiny_mc"], None, [folder])["tiny_mc"]["value"]
        )

    blocks = [reference(range(s, s + 2)) for s in range(5)]
    print("task error with each block of 2 removed:", blocks)
    assert result.blocks == pytest.approx(blocks, abs=1e-12)
    assert max(blocks) > min(blocks)
    assert result.least_important_block() == min(range(5), key=blocks.__getitem__)
    assert result.metric == "task:tiny_mc" and result.layers == []


@pytest.mark.slow  # lm-eval over 13 model variants: 190 s on the shared 2-core machine
def test_task_metric_through_lm_eval_on_a_nemotron_nas_model(tmp_path):
    from minitron.commands.importance import TaskScoring, score_layers
    from minitron.eval import evaluate_tasks
    from tests.conftest import char_tokenizer

    folder = write_tiny_task(tmp_path / "tasks")
    model, tokenizer = tiny_nas(), char_tokenizer()
    task = TaskScoring(include_path=str(folder))
    result = score_layers(model, tokenizer, "task:tiny_mc", [], 2, single_layers=False, task=task)

    def reference(start) -> float:  # built from the kept blocks, scored from scratch
        built = nas_from_kept(model, [i for i in range(len(MIXED)) if i not in (start, start + 1)])
        return (
            1.0 - evaluate_tasks(built, tokenizer, ["tiny_mc"], None, [folder])["tiny_mc"]["value"]
        )

    blocks = [reference(s) for s in range(len(MIXED) - 1)]
    print("task error with each block of 2 removed:", blocks)
    assert result.blocks == pytest.approx(blocks, abs=1e-12)
    assert max(blocks) > min(blocks)
    assert result.metric == "task:tiny_mc"


@pytest.mark.parametrize("metric", ["task:", "accuracy", "task: "])
def test_bad_metric_is_one_error(metric):
    from minitron.commands.importance import ImportanceConfig
    from minitron.commands.prune import PruneConfig
    from minitron.config import parse_config
    from minitron.errors import MinitronError

    with pytest.raises(MinitronError, match="task:<lm-eval task>"):
        parse_config(ImportanceConfig, {"metric": metric})
    with pytest.raises(MinitronError, match="task:<lm-eval task>"):
        parse_config(PruneConfig, {"parent": "p", "target_layers": 3, "metric": metric})

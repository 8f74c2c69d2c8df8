"""Presets against the model cards, and sliding-window perplexity against references."""

from __future__ import annotations

import math

import pytest
import torch

from minitron.commands.eval import EvalConfig
from minitron.config import parse_config
from minitron.errors import MinitronError
from minitron.eval.perplexity import sliding_perplexity, window_starts
from minitron.eval.presets import PRESETS, get_preset
from minitron.evaluate import perplexity
from tests.conftest import VOCAB, tiny_llama

# (lm-eval task, shots, metric, card's number in percent), written from the cards:
# nvidia/Llama-3.1-Minitron-4B-Depth-Base and nvidia/Llama-3_1-Nemotron-51B-Instruct.
CARDS = {
    "minitron-4b": [
        ("mmlu", 5, "acc", 58.7),
        ("hellaswag", 0, "acc_norm", 73.2),
        ("winogrande", 0, "acc", 72.1),
        ("gsm8k", 0, "exact_match,strict-match", 16.8),
        ("arc_challenge", 0, "acc_norm", 52.6),
        ("mbpp", 3, "pass_at_1", 30.7),
    ],
    "nemotron-51b": [
        ("mmlu", 5, "acc", 80.2),
        ("gsm8k", 5, "exact_match,strict-match", 91.43),
        ("winogrande", 5, "acc", 84.53),
        ("arc_challenge", 25, "acc_norm", 69.20),
        ("hellaswag", 10, "acc_norm", 85.58),
        ("truthfulqa_mc2", 0, "acc", 58.63),
    ],
}


@pytest.mark.parametrize("name", sorted(CARDS))
def test_presets_match_the_cards(name):
    preset = get_preset(name)
    rows = [(t.task, t.num_fewshot, t.metric, t.published) for t in preset.tasks]
    assert rows == CARDS[name]


def test_preset_tasks_and_metrics_exist_in_lm_eval():
    """Each preset task is an lm-eval task (or group) whose YAML lists the preset's metric."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    manager = TaskManager()
    for preset in PRESETS.values():
        for row in preset.tasks:
            entry = manager.task_index[row.task]
            config = load_yaml(entry.yaml_path, resolve_func=False)
            metric = row.metric.split(",")[0]
            if row.task == "mmlu":  # a group: its aggregate metric
                assert metric in [m["metric"] for m in config["aggregate_metric_list"]]
                continue
            listed = [str(m["metric"]) for m in config["metric_list"]]
            assert any(metric == m or m.endswith(f".{metric}") for m in listed), (row, listed)
            if "," in row.metric:
                assert row.metric.split(",")[1] in [f["name"] for f in config["filter_list"]]


def test_unknown_preset_and_empty_task_list_are_errors():
    with pytest.raises(MinitronError, match="unknown preset 'llama'"):
        parse_config(EvalConfig, {"preset": "llama"})
    with pytest.raises(MinitronError, match="no tasks given"):
        parse_config(EvalConfig, {"models": ["smollm2-135m"]})


def test_window_starts_cover_the_text():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(8, 4, 4) == [0, 4]
    assert window_starts(3, 8, 4) == [0]
    with pytest.raises(MinitronError):
        window_starts(10, 4, 5)


def test_non_overlapping_windows_equal_chunked_perplexity():
    model = tiny_llama(max_position_embeddings=64)
    ids = torch.randint(0, VOCAB, (48,), generator=torch.Generator().manual_seed(0))
    result = sliding_perplexity(model, ids, window=16, stride=16)
    assert result.tokens == 45  # 3 windows x 15 predictions
    assert result.value == pytest.approx(perplexity(model, [ids.view(3, 16)]), rel=1e-6)


def test_sliding_window_matches_a_token_by_token_reference():
    model = tiny_llama(max_position_embeddings=64)
    ids = torch.randint(0, VOCAB, (30,), generator=torch.Generator().manual_seed(1))
    window, stride = 12, 5
    result = sliding_perplexity(model, ids, window, stride)
    # Token t is scored by the first window reaching past it, with that window's
    # start as the beginning of its context.
    starts = window_starts(len(ids), window, stride)
    nll = 0.0
    for t in range(1, len(ids)):
        begin = next(b for b in starts if b + window > t or b == starts[-1])
        with torch.no_grad():
            logits = model(ids[begin:t][None]).logits[0, -1].double()
        nll -= logits.log_softmax(-1)[ids[t]].item()
    assert result.tokens == len(ids) - 1
    assert result.value == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)

"""Presets against the published numbers, and sliding-window perplexity against references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from minitron.commands.eval import EvalConfig
from minitron.config import parse_config
from minitron.errors import MinitronError
from minitron.eval.harness import TaskOutput, TaskScore
from minitron.eval.perplexity import perplexity, sliding_perplexity, window_starts
from minitron.eval.presets import PRESETS, get_preset
from tests.conftest import VOCAB, tiny_llama

# The published numbers, quoted from arXiv 2408.11796 (table 1) and the model cards; see
# its "_source". Written independently of minitron/eval/presets.py.
PAPERS = json.loads((Path(__file__).parent / "fixtures/papers/published-scores.json").read_text())
# preset -> (the model's key in PAPERS, its parent's key or None)
MODELS = {
    "minitron-4b": ("llama-3.1-minitron-4b-depth", "llama-3.1-8b"),
    "nemotron-51b": ("nemotron-51b-instruct", None),
}
PAPER_NAMES = {"truthfulqa_mc2": "truthfulqa"}  # lm-eval task -> the fixture's name
NOT_REPRODUCED = {"xlsum_en", "mt_bench"}  # docs/eval.md says so
LM_EVAL_MBPP_SHOTS = 3  # MBPP has no published shot count: lm-eval's own prompt


@pytest.mark.parametrize("name", sorted(MODELS))
def test_presets_match_the_published_numbers_and_shots(name):
    preset = get_preset(name)
    model, parent = MODELS[name]
    rows = {PAPER_NAMES.get(t.task, t.task): t for t in preset.tasks}
    assert set(rows) == set(PAPERS[model]) - NOT_REPRODUCED
    for task, row in rows.items():
        paper = PAPERS[model][task]
        shots = LM_EVAL_MBPP_SHOTS if paper["shots"] is None else paper["shots"]
        assert (row.num_fewshot, row.published) == (shots, paper["score"]), task
        expected_parent = (
            PAPERS[parent][task]["score"] if parent and task in PAPERS[parent] else None
        )
        assert row.parent == expected_parent, task
        if parent and task in PAPERS[parent]:
            assert PAPERS[parent][task]["shots"] == paper["shots"], task  # one table, one setting
    assert (preset.parent is None) == (parent is None)


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


class _FakeTasks:
    """Stands in for lm-eval (whose Hub datasets are offline here): fixed scores."""

    def evaluate(self, model, tokenizer, limit, batch_size):
        scores = {
            "hellaswag": TaskScore("acc_norm", 0.5, 0.05, 10, 100),
            "minitron_pairs": TaskScore("acc", 0.75, 0.1, 0, 20),
        }
        return TaskOutput(scores)


def test_eval_record_and_table_show_the_parent_and_model_numbers(tiny_checkpoint):
    from rich.console import Console

    from minitron.cli.eval import results_table
    from minitron.commands.eval import evaluate_model

    preset = get_preset("minitron-4b")
    config = EvalConfig(models=[str(tiny_checkpoint)], preset="minitron-4b", device="cpu")
    row, _ = evaluate_model(config, str(tiny_checkpoint), _FakeTasks(), preset)
    paper = PAPERS["llama-3.1-minitron-4b-depth"]["hellaswag"]["score"]
    parent = PAPERS["llama-3.1-8b"]["hellaswag"]["score"]
    hs = row["tasks"]["hellaswag"]
    assert (hs["published"], hs["published_parent"]) == (paper, parent)
    assert row["tasks"]["minitron_pairs"]["published_parent"] is None
    record = {"preset": "minitron-4b", "published": preset.record(), "limit": None, "models": [row]}
    assert record["published"]["parent"] == "meta-llama/Llama-3.1-8B"
    console = Console(record=True, width=250)
    console.print(results_table(record))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "paper:" in line)
    assert header.index("paper: Llama-3.1-8B") < header.index("paper: Llama-3.1-Minitron-4B-Depth")
    hellaswag = next(line for line in lines if line.strip("│ ").startswith("hellaswag"))
    cells = hellaswag.replace("│", " ").split()
    assert cells[-5:] == ["50.00", "±", "5.00", f"{parent:.2f}", f"{paper:.2f}"]

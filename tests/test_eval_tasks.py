"""lm-eval glue on tiny random Llamas: scores against a plain reference, paths, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from minitron.errors import MinitronError
from minitron.eval.harness import SUITE_DIR, TaskSet, anchor_config, evaluate_tasks
from tests.conftest import char_tokenizer, tiny_llama

FIXTURES = Path(__file__).parent / "fixtures" / "eval_tasks"


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(max_position_embeddings=256), char_tokenizer()


def reference_choice_scores(model, tokenizer, docs):
    """acc and acc_norm by hand: sum log p(" " + choice | context), argmax."""
    acc, acc_norm = [], []
    for doc in docs:
        context = tokenizer(doc["context"], add_special_tokens=False)["input_ids"]
        lls, norms = [], []
        for choice in doc["choices"]:
            cont = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + cont])
            with torch.no_grad():
                logprobs = model(ids).logits[0].float().log_softmax(-1)  # [T, V]
            positions = range(len(context) - 1, len(context) + len(cont) - 1)
            ll = sum(logprobs[p, ids[0, p + 1]].item() for p in positions)
            lls.append(ll)
            norms.append(ll / len((" " + choice).encode()))
        acc.append(float(max(range(len(lls)), key=lls.__getitem__) == doc["label"]))
        acc_norm.append(float(max(range(len(norms)), key=norms.__getitem__) == doc["label"]))
    return sum(acc) / len(acc), sum(acc_norm) / len(acc_norm)


def test_multiple_choice_scores_match_a_plain_reference(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    folder = tmp_path / "tasks"
    shutil.copytree(FIXTURES, folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # data/ is relative to the YAML, not to the cwd
    docs = [json.loads(line) for line in (folder / "data/tiny_choice.jsonl").open()]
    acc, acc_norm = reference_choice_scores(model, tokenizer, docs[:5])
    plain = TaskSet(["tiny_choice"], [folder])
    normed = TaskSet(["tiny_choice"], [folder], metrics={"tiny_choice": "acc_norm"})
    first = plain.evaluate(model, tokenizer, limit=5).scores["tiny_choice"]
    assert (first.metric, first.samples, first.num_fewshot) == ("acc", 5, 0)
    assert first.value == pytest.approx(acc)
    assert normed.evaluate(model, tokenizer, limit=5).scores["tiny_choice"].value == (
        pytest.approx(acc_norm)
    )
    again = evaluate_tasks(model, tokenizer, ["tiny_choice"], limit=5, include_paths=[folder])
    assert again["tiny_choice"]["value"] == first.value


def test_relative_data_paths_are_anchored_to_the_yaml_folder(tmp_path):
    config = {
        "dataset_path": "data",
        "dataset_kwargs": {"data_files": {"test": "a.jsonl", "train": ["b.jsonl", "/abs.jsonl"]}},
    }
    (tmp_path / "data").mkdir()
    anchored = anchor_config(config, tmp_path)
    assert anchored["dataset_path"] == str(tmp_path / "data")
    assert anchored["dataset_kwargs"]["data_files"] == {
        "test": str(tmp_path / "a.jsonl"),
        "train": [str(tmp_path / "b.jsonl"), "/abs.jsonl"],
    }
    assert config["dataset_kwargs"]["data_files"]["test"] == "a.jsonl"  # a copy was changed
    assert anchor_config({"dataset_path": "json"}, tmp_path)["dataset_path"] == "json"


def test_the_offline_suite_is_registered():
    suite = TaskSet(["minitron-suite"])
    assert [r.leaves for r in suite.requested] == [
        ["minitron_story", "minitron_pairs", "minitron_arith", "minitron_series"]
    ]
    assert suite.code_tasks == []
    for name, count in [("story", 20), ("pairs", 20), ("arith", 16), ("series", 300), ("code", 8)]:
        assert len((SUITE_DIR / f"{name}.jsonl").read_text().splitlines()) == count


def test_missing_include_path_is_an_error(tmp_path):
    # An unknown task is checked from the CLI (tests/test_eval_cli.py): it has to
    # index lm-eval's 15k built-in tasks first, which takes seconds.
    with pytest.raises(MinitronError, match="include path not found"):
        TaskSet(["tiny_choice"], [tmp_path / "nowhere"])


def test_code_tasks_need_permission_and_are_scored_in_the_sandbox(tiny):
    model, tokenizer = tiny
    with pytest.raises(MinitronError, match="tiny_code runs generated code.*--allow-code"):
        TaskSet(["tiny_code"], [FIXTURES])
    with pytest.raises(MinitronError, match="minitron_code runs generated code"):
        TaskSet(["minitron_code"])
    allowed = TaskSet(["tiny_code"], [FIXTURES], allow_code=True)
    output = allowed.evaluate(model, tokenizer, limit=1)
    assert output.scores["tiny_code"].metric == "pass_at_1"
    assert output.scores["tiny_code"].value == 0.0  # random characters are no program
    (sample,) = output.samples["tiny_code"]
    assert sample["pass_at_1"] == 0.0 and sample["target"] == "assert one() == 1"

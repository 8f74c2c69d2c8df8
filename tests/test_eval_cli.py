"""``minitron eval`` as a user runs it: the offline suite, several models, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minitron.commands.eval import EvalConfig
from minitron.config import parse_config
from minitron.eval.harness import TaskSet
from minitron.io import load_model
from minitron.prune import drop_layers
from tests.conftest import save_tiny_checkpoint
from tests.test_cli import assert_user_error, minitron

FIXTURES = Path(__file__).parent / "fixtures" / "eval_tasks"
SUITE = ["minitron_story", "minitron_pairs", "minitron_arith", "minitron_series"]
LIMIT = 3
PPL = ["--ppl-tokens", "256", "--ppl-window", "128", "--ppl-stride", "64"]


@pytest.mark.slow
def test_suite_scores_agree_between_cli_and_api_and_pruning_lowers_them(tmp_path):
    model, tokenizer = load_model("smollm2-135m")
    # One run in this process and one from the CLI in another: two independent runs.
    api = TaskSet(["minitron-suite"]).evaluate(model, tokenizer, limit=LIMIT).scores
    pruned = tmp_path / "smollm2-135m-20l"
    drop_layers(model, range(18, 28))  # a contiguous 10-layer block, as the depth recipe drops
    model.save_pretrained(pruned)
    tokenizer.save_pretrained(pruned)
    del model

    out = tmp_path / "eval"
    args = ["eval", "smollm2-135m", pruned, "--tasks", "minitron-suite,perplexity"]
    result = minitron(*args, "--limit", LIMIT, *PPL, "--output", out)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "results.json").read_text())
    parent, child = record["models"]
    assert (record["kind"], record["limit"], record["preset"]) == ("eval", LIMIT, None)
    assert record["published"] is None
    assert parent["model"] == "smollm2-135m" and child["model"] == str(pruned)
    assert parent["params"] == 134_515_008 and child["params"] < parent["params"]
    for task in SUITE:
        cli = parent["tasks"][task]
        assert cli == api[task].to_dict() | {"published": None, "published_parent": None}
        assert cli["samples"] == LIMIT
        assert child["tasks"][task]["value"] <= cli["value"], task
    print({t: (parent["tasks"][t]["value"], child["tasks"][t]["value"]) for t in SUITE})
    mean = [sum(row["tasks"][t]["value"] for t in SUITE) / len(SUITE) for row in (parent, child)]
    assert mean[1] < mean[0]
    assert child["perplexity"]["value"] > parent["perplexity"]["value"]
    assert parent["perplexity"]["tokens"] == 255
    for folder in ("0-smollm2-135m", "1-smollm2-135m-20l"):
        for task in SUITE:
            lines = (out / "samples" / folder / f"{task}.jsonl").read_text().splitlines()
            assert len(lines) == LIMIT and "doc" in json.loads(lines[0])
    assert "minitron_story" in result.stdout and "perplexity" in result.stdout

    # The record holds the whole config: it parses back into the command's own.
    assert parse_config(EvalConfig, record["config"]).models == ["smollm2-135m", str(pruned)]


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    tiny = save_tiny_checkpoint(tmp_path / "tiny")
    out = tmp_path / "out"
    assert_user_error(
        minitron("eval", tiny, "--tasks", "minitron_stroy", "--output", out),
        "unknown task 'minitron_stroy' (did you mean minitron_story",
    )
    assert_user_error(
        minitron("eval", tiny, "--tasks", "tiny_choice", "--include-path", tmp_path / "no",
                 "--output", out),
        "include path not found",
    )  # fmt: skip
    assert_user_error(
        minitron("eval", tiny, "--tasks", "minitron_code", "--output", out),
        "task minitron_code runs generated code: pass --allow-code-execution",
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    assert_user_error(
        minitron("eval", broken, "--tasks", "tiny_choice", "--include-path", FIXTURES,
                 "--output", out),
        f"could not load model '{broken}'",
    )  # fmt: skip
    assert not out.exists()

"""minitron distill on prepared datasets: blends, records, refusals, and exact resume."""

from __future__ import annotations

import json

import pytest

from minitron.commands.data import PrepareConfig, run_prepare
from minitron.config import parse_config
from tests.test_cli import assert_user_error
from tests.test_distill_runs import (
    kill_after_first_checkpoint,
    minitron,
    result,
    run_ok,
    save_pair,
)

RECIPE = """\
teacher: {teacher}
student: {student}
data:
  prepared: [{{path: {first}, weight: 0.7}}, {{path: {second}, weight: 0.3}}]
  heldout: 4
  seq_len: 48
  batch_size: 2
max_steps: {steps}
grad_accum: 2
precision: "32"
accelerator: cpu
val_every: 5
checkpoint_every: 1
optim: {{lr: 0.003, min_lr: 0.0003, warmup_steps: 3}}
"""


@pytest.fixture
def models(tmp_path):
    return save_pair(tmp_path)


@pytest.fixture
def prepared(tmp_path, models):
    """Two datasets prepared with the student's tokenizer (~60k and ~40k tokens)."""
    for name, count in (("first", 600), ("second", 400)):
        lines = [json.dumps({"text": f"{name} {i}: " + "some words here " * (i % 6 + 1)})
                 for i in range(count)]  # fmt: skip
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    config = parse_config(PrepareConfig, {
        "tokenizer": str(models[1]),
        "sources": [{"name": n, "path": str(tmp_path / f"{n}.jsonl")} for n in ("first", "second")],
    })  # fmt: skip
    run_prepare(config, tmp_path / "data")
    return tmp_path / "data/first", tmp_path / "data/second"


def write(tmp_path, models, prepared, steps=30, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(RECIPE.format(teacher=models[0], student=models[1], first=prepared[0],
                                  second=prepared[1], steps=steps))  # fmt: skip
    return path


def test_killed_and_resumed_prepared_run_matches_an_uninterrupted_one(tmp_path, models, prepared):
    recipe = write(tmp_path, models, prepared)
    done = run_ok(recipe, "--output", tmp_path / "straight")
    assert "reads 5,760 tokens from 2 prepared dataset(s)" in done.stderr
    assert "data.prepared is read: data.source" in done.stderr
    killed_at = kill_after_first_checkpoint(recipe, tmp_path / "resumed")
    run_ok(recipe, "--output", tmp_path / "resumed", "--resume")
    (straight, w_straight), (resumed, w_resumed) = (
        result(tmp_path / "straight"),
        result(tmp_path / "resumed"),
    )
    a = [r["train_loss"] for r in straight["history"]]
    b = [r["train_loss"] for r in resumed["history"]]
    print(f"killed after {killed_at}; losses straight {a[-3:]} resumed {b[-3:]}")
    assert [r["step"] for r in resumed["history"]] == list(range(1, 31))
    assert b == pytest.approx(a, rel=1e-6, abs=1e-6)
    for name, tensor in w_straight.items():
        assert (tensor - w_resumed[name]).abs().max() <= 1e-6, name
    # the same sequences, from the same datasets, position by position
    assert resumed["tokens_per_source"] == straight["tokens_per_source"]
    per_source = straight["tokens_per_source"]
    assert sum(per_source.values()) == 30 * 4 * 48
    print("tokens per source", per_source)
    assert per_source[str(prepared[0])] / (30 * 4 * 48) == pytest.approx(0.7, abs=0.05)
    assert straight["data"]["prepared"][0] == {"path": str(prepared[0]), "weight": 0.7}


def test_a_run_longer_than_the_data_is_refused(tmp_path, models, prepared):
    recipe = write(tmp_path, models, prepared, steps=2000)
    done = minitron("distill", recipe, "--output", tmp_path / "out")
    assert_user_error(done, "times its")
    assert "data.max_epochs is 1" in done.stderr
    assert not (tmp_path / "out").exists()


def test_data_from_another_vocabulary_is_refused(tmp_path, models, prepared):
    manifest = prepared[0].parent / "data.json"
    record = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(record | {"vocab_hash": "0" * 64, "tokenizer": "other"}))
    done = minitron("distill", write(tmp_path, models, prepared), "--output", tmp_path / "out")
    assert_user_error(done, "was prepared with the tokenizer of other")
    assert not (tmp_path / "out").exists()


def test_missing_prepared_dataset_is_one_line(tmp_path, models, prepared):
    recipe = write(tmp_path, models, (tmp_path / "nope", prepared[1]))
    done = minitron("distill", recipe, "--output", tmp_path / "out")
    assert_user_error(done, "prepared dataset not found")


def test_ddp_on_two_processes_reads_what_one_process_reads(tmp_path, models, prepared):
    """2 gloo ranks of micro-batch 1 against 1 rank of micro-batch 2 (same global batch):
    the same sequences at every position, so the same losses and tokens per source."""
    one = write(tmp_path, models, prepared, steps=4, name="one.yaml")
    run_ok(one, "--output", tmp_path / "one", "--set", "data.batch_size=2",
           "--set", "checkpoint_every=4")  # fmt: skip
    run_ok(one, "--output", tmp_path / "two", "--set", "data.batch_size=1", "--set", "strategy=ddp",
           "--set", "devices=2", "--set", "checkpoint_every=4")  # fmt: skip
    (single, _), (ddp, _) = result(tmp_path / "one"), result(tmp_path / "two")
    assert ddp["global_batch"] == single["global_batch"] == 4
    a = [r["train_loss"] for r in single["history"]]
    b = [r["train_loss"] for r in ddp["history"]]
    print("1 process", a, "\n2 processes", b)
    assert b == pytest.approx(a, rel=1e-4)
    assert ddp["tokens_per_source"] == single["tokens_per_source"]

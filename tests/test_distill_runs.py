"""minitron distill as a user runs it: killed and resumed, DDP on 2 CPU processes, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from safetensors.torch import load_file

from minitron.commands.distill import work_dir
from tests.conftest import char_tokenizer, tiny_llama
from tests.test_cli import MINITRON, ROOT, assert_user_error

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: threads only add contention


def minitron(*args):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "COLUMNS": "200"} | ONE_THREAD
    return subprocess.run(
        [str(MINITRON), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True
    )


RECIPE = """\
teacher: {teacher}
student: {student}
data: {{samples: 24, heldout: 4, seq_len: 48, batch_size: {batch}}}
max_steps: {steps}
grad_accum: 2
precision: "32"
accelerator: cpu
val_every: 5
checkpoint_every: {every}
optim: {{lr: 0.003, min_lr: 0.0003, warmup_steps: 3}}
"""


@pytest.fixture
def models(tmp_path):
    return save_pair(tmp_path)


def save_pair(tmp_path):
    """A 4-layer teacher and a 2-layer student of the same (larger) tiny shape."""
    big = {"hidden_size": 64, "intermediate_size": 128}
    tiny_llama(4, seed=0, **big).save_pretrained(tmp_path / "teacher")
    tiny_llama(2, seed=3, **big).save_pretrained(tmp_path / "student")
    for name in ("teacher", "student"):
        char_tokenizer().save_pretrained(tmp_path / name)
    return tmp_path / "teacher", tmp_path / "student"


def write(tmp_path, models, name="recipe.yaml", batch=2, steps=30, every=1):
    path = tmp_path / name
    path.write_text(RECIPE.format(teacher=models[0], student=models[1], batch=batch,
                                  steps=steps, every=every))  # fmt: skip
    return path


def result(folder):
    record = json.loads((folder / "distill.json").read_text())
    return record, load_file(folder / "model.safetensors")


def run_ok(*args):
    done = minitron("distill", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def kill_after_first_checkpoint(recipe, out):
    """Start a run, SIGKILL it as soon as a checkpoint exists: it lands during the next
    steps or the next checkpoint's write, never after the end (30 steps to go)."""
    env_cmd = [str(MINITRON), "distill", str(recipe), "--output", str(out)]
    env = os.environ | {"HF_HUB_OFFLINE": "1"} | ONE_THREAD
    proc = subprocess.Popen(
        env_cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    latest = work_dir(out) / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not out.exists(), "the run finished before it could be killed"
    return latest.read_text().strip()


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, models):
    recipe = write(tmp_path, models)
    run_ok(recipe, "--output", tmp_path / "straight")
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
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    assert resumed["final"] == pytest.approx(straight["final"], rel=1e-5)
    assert w_straight.keys() == w_resumed.keys()
    for name, tensor in w_straight.items():
        assert (tensor - w_resumed[name]).abs().max() <= 1e-6, name


def test_ddp_on_two_processes_matches_one_process(tmp_path, models):
    one = write(tmp_path, models, "one.yaml", batch=4, steps=4, every=4)
    two = write(tmp_path, models, "two.yaml", batch=2, steps=4, every=4)
    run_ok(one, "--output", tmp_path / "one")
    run_ok(two, "--output", tmp_path / "two", "--set", "strategy=ddp", "--set", "devices=2")
    (single, w_single), (ddp, w_ddp) = result(tmp_path / "one"), result(tmp_path / "two")
    a = [r["train_loss"] for r in single["history"]]
    b = [r["train_loss"] for r in ddp["history"]]
    print("1 process", a, "\n2 processes", b)
    assert ddp["global_batch"] == single["global_batch"] == 8
    assert b == pytest.approx(a, rel=1e-4)
    assert ddp["final"]["val_kl"] == pytest.approx(single["final"]["val_kl"], rel=1e-4)
    for name, tensor in w_single.items():
        assert (tensor - w_ddp[name]).abs().max() <= 1e-4, name


def test_cli_errors_are_one_line(tmp_path, models):
    """Two users' errors through the real command: one before weights load, one after
    the tokenizers are read (the rest are checked in-process in test_distill.py)."""
    recipe = write(tmp_path, models, steps=2)
    assert_user_error(
        minitron("distill", recipe, "--output", tmp_path / "out", "--resume"), "nothing to resume"
    )
    mismatch = tmp_path / "other"
    tiny_llama(2, vocab_size=98, hidden_size=64, intermediate_size=128).save_pretrained(mismatch)
    tokenizer = char_tokenizer()
    tokenizer.add_tokens(["<extra>"])  # same vocab_size in config.json, not the same vocabulary
    tokenizer.save_pretrained(mismatch)
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace(str(models[1]), str(mismatch)))
    assert_user_error(minitron("distill", bad, "--output", tmp_path / "o2"), "tokenizers differ")
    assert not (tmp_path / "o2").exists() and not work_dir(tmp_path / "o2").exists()


def test_demo_recipe_on_a_cpu_without_native_bf16_runs_in_fp32(tmp_path, models):
    """The shipped demo recipe (precision: auto) where bf16 would be emulated.

    ``ONEDNN_MAX_CPU_ISA=AVX2`` makes oneDNN dispatch as on an AVX2-only CPU (and
    minitron detects it so), on any machine. The run records ``precision: "32"``,
    exactly the run that ``--set precision=32`` gives: same Lightning precision,
    same losses, so no slower (benchmarks/cpu_precision.py times the real pair).
    """
    demo = ROOT / "recipes/smollm2-135m/distill.yaml"
    tiny = [f"teacher={models[0]}", f"student={models[1]}", "max_steps=2", "val_every=2",
            "checkpoint_every=2", "data.samples=8", "data.heldout=2", "data.seq_len=32",
            "data.batch_size=2", "accelerator=cpu"]  # fmt: skip
    sets = [arg for item in tiny for arg in ("--set", item)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    runs = {}
    for name, extra in (("auto", []), ("fp32", ["--set", "precision=32"])):
        done = subprocess.run(
            [str(MINITRON), "distill", demo, *sets, *extra, "--output", tmp_path / name],
            cwd=ROOT, env=env | ONE_THREAD, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = (result(tmp_path / name)[0], done.stderr)
    (auto, said), (fp32, said32) = runs["auto"], runs["fp32"]
    assert auto["recipe"]["precision"] == "auto" and fp32["recipe"]["precision"] == "32"
    assert auto["precision"] == fp32["precision"] == "32"
    assert (
        "precision: 32 (auto: ONEDNN_MAX_CPU_ISA=AVX2 caps oneDNN below its bf16)" in said
        or "precision: 32 (auto: this CPU has no AVX512-BF16 or AMX" in said
    )
    assert "precision:" not in said32  # said only when auto chose, or to warn
    losses = [[r["train_loss"] for r in run["history"]] for run in (auto, fp32)]
    assert losses[0] == losses[1]

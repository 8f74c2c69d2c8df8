"""minitron distill on tiny random Llamas: data order, schedule, a whole run, fp8, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from minitron.commands.distill import DistillConfig, run_distill, work_dir
from minitron.config import parse_config
from minitron.distill.data import Layout, SeededOrder, StepBatches
from minitron.distill.settings import lr_factor
from minitron.errors import MinitronError
from minitron.hardware import cpu_bf16_native
from tests.conftest import char_tokenizer, save_tiny_checkpoint, tiny_llama


def recipe(teacher, student, **overrides) -> DistillConfig:
    """A tiny, fast recipe: 16 training sequences of 32 characters, fp32."""
    values = {
        "teacher": str(teacher),
        "student": str(student),
        "data": {"samples": 16, "heldout": 4, "seq_len": 32, "batch_size": 2},
        "max_steps": 6,
        "grad_accum": 2,
        "precision": "32",
        "val_every": 3,
        "checkpoint_every": 2,
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            values[key] = {**values.get(key, {}), **value}
        else:
            values[key] = value
    return parse_config(DistillConfig, values)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a busy machine makes them crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pair(tmp_path):
    """A 4-layer teacher and a 2-layer student (the teacher's first two layers)."""
    teacher = save_tiny_checkpoint(tmp_path / "teacher", num_layers=4, seed=0)
    student = tiny_llama(4, seed=0)
    student.model.layers = student.model.layers[:2]
    student.config.num_hidden_layers = 2
    student.save_pretrained(tmp_path / "student")
    char_tokenizer().save_pretrained(tmp_path / "student")
    return teacher, tmp_path / "student"


def test_one_process_and_two_ranks_read_the_same_global_batches():
    tokens = torch.arange(40 * 3).view(40, 3)
    one = StepBatches(tokens, seed=5, layout=Layout(4, 2, 1))
    ranks = [StepBatches(tokens, seed=5, layout=Layout(2, 2, 2), rank=r) for r in (0, 1)]
    for step in range(12):  # 12 steps x 8 sequences: wraps around 40 sequences twice
        whole = torch.cat([one.micro_batch(step, j) for j in range(2)])
        split = torch.cat([r.micro_batch(step, j) for r in ranks for j in range(2)])
        assert sorted(whole[:, 0].tolist()) == sorted(split[:, 0].tolist())
    first_pass = torch.cat([one.micro_batch(s, j) for s in range(5) for j in range(2)])
    assert sorted(first_pass[:, 0].tolist()) == list(range(0, 120, 3))  # each sequence once


def test_a_stream_started_at_step_k_continues_the_order():
    tokens = torch.arange(30).view(10, 3)
    full = iter(StepBatches(tokens, seed=1, layout=Layout(2, 3)))
    later = iter(StepBatches(tokens, seed=1, layout=Layout(2, 3), start_step=4))
    for _ in range(4 * 3):
        next(full)
    for _ in range(9):
        assert torch.equal(next(full), next(later))
    orders = SeededOrder(10, seed=1)
    assert not torch.equal(orders.permutation(0), orders.permutation(1))


def test_warmup_then_cosine_to_min_lr():
    factors = [lr_factor(s, 4, 20, 0.1) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and math.isclose(factors[-1], 0.1)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:], strict=False))
    assert math.isclose(factors[12], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 15)))


def test_a_run_writes_an_hf_student_with_its_record(tmp_path, pair):
    teacher, student = pair
    record = run_distill(recipe(teacher, student), tmp_path / "out")
    out = tmp_path / "out"
    saved = json.loads((out / "distill.json").read_text())
    for key in ("teacher", "student", "output", "params", "layers", "tokens_seen", "steps",
                "start", "final", "teacher_val", "history", "val_history", "recipe",
                "minitron_version"):  # fmt: skip
        assert key in saved, key
    assert saved["kind"] == "distill" and saved["layers"] == 2 and saved["steps"] == 6
    assert saved["tokens_seen"] == 6 * 4 * 32 == saved["history"][-1]["tokens"]
    assert [r["step"] for r in saved["val_history"]] == [0, 3, 6]
    assert [r["step"] for r in saved["history"]] == [1, 2, 3, 4, 5, 6]
    assert saved["final"]["val_kl"] < saved["start"]["val_kl"]
    assert (out / "loss_curve.png").stat().st_size > 10_000
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, LlamaForCausalLM) and model.config.num_hidden_layers == 2
    assert record["final"] == saved["final"]
    work = work_dir(out)
    assert sorted(p.name for p in (work / "checkpoints").glob("*.ckpt")) == [
        "step-000004.ckpt",
        "step-000006.ckpt",
    ]
    assert list((work / "logs" / "csv").rglob("metrics.csv"))
    assert list((work / "logs" / "tensorboard").rglob("events.out.tfevents.*"))


def test_lm_objective_teacher_correction_auto_precision_and_checkpointing(tmp_path, pair, capsys):
    """precision: auto is bf16-mixed where this CPU has native bf16, else 32."""
    teacher, student = pair
    config = recipe(
        teacher, student, loss={"objective": "lm"}, max_steps=2,
        precision="auto", activation_checkpointing=True,
        teacher_correction={"enabled": True, "steps": 2, "lr": 1e-3, "warmup_steps": 1},
    )  # fmt: skip
    record = run_distill(config, tmp_path / "out")
    expected = "bf16-mixed" if cpu_bf16_native()[0] else "32"
    assert record["precision"] == expected and record["recipe"]["precision"] == "auto"
    assert f"precision: {expected} (auto: " in capsys.readouterr().err
    corrected = work_dir(tmp_path / "out") / "teacher-corrected"
    assert (corrected / "config.json").is_file()
    before = LlamaForCausalLM.from_pretrained(teacher).model.layers[0].mlp.up_proj.weight
    after = LlamaForCausalLM.from_pretrained(corrected).model.layers[0].mlp.up_proj.weight
    assert not torch.equal(before, after)  # the teacher was fine-tuned...
    assert record["teacher_val"]["val_loss"] > 0  # ...and is the one validated against
    assert record["final"]["val_loss"] < record["start"]["val_loss"]


def test_fp8_trains_on_cpu(tmp_path, pair):
    pytest.importorskip("torchao")
    teacher, student = pair
    config = recipe(teacher, student, precision="fp8", max_steps=8, val_every=8)
    record = run_distill(config, tmp_path / "out")
    losses = [r["train_loss"] for r in record["history"]]
    print("fp8 train loss", [round(x, 4) for x in losses])
    print("fp8 held-out KL", record["start"]["val_kl"], "->", record["final"]["val_kl"])
    assert sum(losses[-3:]) < sum(losses[:3])
    assert record["final"]["val_kl"] < record["start"]["val_kl"]
    saved = LlamaForCausalLM.from_pretrained(tmp_path / "out")  # plain Linear layers again
    assert type(saved.model.layers[0].mlp.up_proj) is torch.nn.Linear


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, pair):
    teacher, student = pair
    config = recipe(teacher, student, optim={"lr": 1e30, "min_lr": 1e29, "warmup_steps": 0},
                    grad_accum=1, max_steps=20, checkpoint_every=1)  # fmt: skip
    with pytest.raises(MinitronError, match=r"training loss is (nan|inf) at step \d+.*--resume"):
        run_distill(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    checkpoints = list((work_dir(tmp_path / "out") / "checkpoints").glob("step-*.ckpt"))
    assert checkpoints


def test_bad_inputs_are_one_line_errors(tmp_path, pair):
    teacher, student = pair
    wide = tiny_llama(2, vocab_size=120)
    wide.save_pretrained(tmp_path / "wide")
    char_tokenizer().save_pretrained(tmp_path / "wide")
    cases = [
        (recipe(teacher, tmp_path / "wide"), "vocabularies differ (98 vs 120 tokens)"),
        (recipe(teacher, tmp_path / "nope"), "student: model not found"),
        (recipe(teacher, student, data={"seq_len": 100}), "seq_len 100 exceeds the models' 64"),
    ]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append((recipe(teacher, student, strategy="fsdp"), "fsdp needs CUDA GPUs"))
    empty = {"source": str(tmp_path / "empty.txt")}
    cases.append((recipe(teacher, student, data=empty), "gave 0 sequences"))
    (tmp_path / "empty.txt").write_text("")
    for config, message in cases:
        with pytest.raises(MinitronError, match=message.replace("(", r"\(").replace(")", r"\)")):
            run_distill(config, tmp_path / "out")
    with pytest.raises(MinitronError, match="nothing to resume"):
        run_distill(recipe(teacher, student), tmp_path / "out", resume=True)
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    with pytest.raises(MinitronError, match="output folder exists: .* --overwrite"):
        run_distill(recipe(teacher, student), tmp_path / "out")
    with pytest.raises(MinitronError, match="would replace the input"):
        run_distill(recipe(teacher, student), student, overwrite=True)


def test_a_nemotron_nas_student_stays_nemotron_nas(tmp_path):
    pytest.importorskip("tests.nas_helpers")  # the nemotron-nas class (the NAS issue)
    from tests.nas_helpers import TINY, tiny_nas

    tiny_llama(4, seed=0, **TINY).save_pretrained(tmp_path / "teacher")
    tiny_nas().save_pretrained(tmp_path / "student")
    for name in ("teacher", "student"):
        char_tokenizer().save_pretrained(tmp_path / name)
    config = recipe(tmp_path / "teacher", tmp_path / "student", max_steps=4, val_every=4)
    record = run_distill(config, tmp_path / "out")
    assert record["final"]["val_kl"] < record["start"]["val_kl"]
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (saved["model_type"], saved["architectures"]) == ("nemotron-nas", ["DeciLMForCausalLM"])
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "out")).__name__ == (
        "DeciLMForCausalLM"
    )


def test_fp8_on_cuda_compiles_the_student_layers_by_default():
    from minitron.commands.distill import DistillConfig, compiles_layers, prepare_student
    from minitron.config import parse_config

    def config(**extra):
        return parse_config(DistillConfig, {"teacher": "t", "student": "s"} | extra)

    assert compiles_layers(config(precision="fp8"), on_cuda=True)
    assert not compiles_layers(config(precision="fp8"), on_cuda=False)
    assert not compiles_layers(config(), on_cuda=True)
    assert compiles_layers(config(compile_layers=True), on_cuda=False)
    assert not compiles_layers(config(precision="fp8", compile_layers=False), on_cuda=True)
    student = tiny_llama()
    names = list(student.state_dict())
    prepare_student(student, config(compile_layers=True, accelerator="cpu"))
    assert list(student.state_dict()) == names  # checkpoints and the export keep their names
    assert all(layer._compiled_call_impl is not None for layer in student.model.layers)

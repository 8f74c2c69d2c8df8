"""Tokens/s of a `minitron distill` training step against a plain PyTorch loop, one run.

Both sides do the same work on the same models and batches: teacher forward under
no_grad, student forward to the final hidden states, the same `ChunkedKDLoss`,
backward, gradient-norm clipping, AdamW step and LR schedule, at the same precision.
The minitron side is the real `DistillModule` run by the Lightning Trainer that
`minitron distill` builds (`build_trainer`: loggers, progress bar, per-step loss
logging and its NaN check), less the held-out validation and checkpoint callbacks,
which run every N steps, not in a step. The plain side is a hand-written loop.

Rounds alternate between the two sides (and which goes first) so that load from
other processes hits both alike; in each round the first `--warmup` steps are not
timed. A minitron step is timed from the end of one batch to the end of the next,
so the Trainer's data fetching, hooks and logging count against it.

On CUDA it also reports MFU against 2·N_teacher + 6·N_student FLOPs per token, N =
the parameters of the Linear layers (LM head included, embedding table not; the
attention score FLOPs are not counted either), at a peak of 790 TFLOP/s (bf16,
measured on an H200). Prints one JSON line.

    python benchmarks/distill_step.py                      # tiny random models, CPU
    python benchmarks/distill_step.py --teacher-config tests/fixtures/llama-3.1-8b/config.json \\
        --student-layers 16 --device cuda --batch 2 --seq 4096 --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from minitron.distill.data import Layout, StepBatches
from minitron.distill.module import DistillModule, final_hidden
from minitron.distill.precision import convert_fp8, trainer_precision
from minitron.distill.run import HeldoutValidation, StepCheckpoint, TrainerOptions, build_trainer
from minitron.distill.settings import LossConfig, OptimConfig, lr_factor
from minitron.layers import decoder_layers

PEAK_FLOPS = 790e12  # bf16 dense matmul, measured on an H200 (KINDS.md: 769-798 TFLOP/s)

TINY = {  # a small Llama so the CPU default runs in about a minute on 2 cores
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 8,
    "vocab_size": 8192,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_json_config(path: str | None) -> dict:
    if path is None:
        return dict(TINY)
    config = json.loads(Path(path).read_text())
    return {k: v for k, v in config.items() if k not in ("torch_dtype", "dtype")}


def build_model(config: dict, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A random causal LM of ``config`` built directly on ``device`` in ``dtype``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**config)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model


def linear_params(model: nn.Module) -> int:
    """Parameters of the model's Linear layers (LM head included, embeddings not)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


class StepTimer(Callback):
    """Wall-clock time at the end of each training batch; frees the optimizer state at the
    end so the Trainer's teardown does not copy it to the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.marks = device, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, module) -> None:
        for optimizer in trainer.optimizers:
            optimizer.state.clear()


def minitron_round(module: DistillModule, options: TrainerOptions, args, device) -> float:
    """Seconds of ``args.steps`` timed steps through the Lightning Trainer."""
    work = Path(tempfile.mkdtemp(prefix="distill_step_"))
    opts = dataclasses.replace(options, max_steps=args.warmup + args.steps)
    trainer = build_trainer(opts, work)
    timer = StepTimer(device)
    skip = (HeldoutValidation, StepCheckpoint)
    trainer.callbacks[:] = [timer] + [c for c in trainer.callbacks if not isinstance(c, skip)]
    trainer.fit(module)
    marks = timer.marks[args.warmup - 1 :]
    seconds = marks[-1] - marks[0]
    module.trainer = None
    del trainer
    return seconds


def plain_round(student, teacher, loss_fn, batches, optim: OptimConfig, args, device) -> float:
    """Seconds of ``args.steps`` timed steps of a hand-written loop doing the same work."""
    student.to(device).train()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
        weight_decay=optim.weight_decay,
    )  # fmt: skip
    ratio = optim.min_lr / optim.lr
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, optim.warmup_steps, args.schedule_steps, ratio)
    )
    autocast = precision_autocast(args.precision, device)
    start = time.perf_counter()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        ids = next(batches).to(device)  # [B, T]
        with autocast:
            hidden = final_hidden(student, ids)[:, :-1]  # [B, T-1, H_s]
            with torch.no_grad():
                target = final_hidden(teacher, ids)[:, :-1]  # [B, T-1, H_t]
            out = loss_fn(
                hidden.reshape(-1, hidden.shape[-1]), student.lm_head,
                target.reshape(-1, target.shape[-1]), teacher.lm_head, ids[:, 1:].reshape(-1),
            )  # fmt: skip
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start
    del optimizer, schedule
    return seconds


def precision_autocast(precision: str, device: torch.device):
    """The autocast Lightning's precision plugin puts around a training step."""
    if trainer_precision(precision, device.type == "cuda") == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher-config", help="HF config.json of the teacher (default: tiny)")
    p.add_argument("--student-config", help="HF config.json of the student (default: teacher's)")
    p.add_argument("--student-layers", type=int, help="student = teacher config with N layers")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--precision", choices=["bf16-mixed", "32", "fp8"], default="32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    p.add_argument("--steps", type=int, default=4, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per round (>= 1)")
    p.add_argument("--chunk-tokens", type=int, default=LossConfig.chunk_tokens)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile each student decoder layer"
    )
    args = p.parse_args()
    args.warmup = max(args.warmup, 1)
    args.schedule_steps = 1000
    return args


def models(args, device):
    teacher_cfg = load_json_config(args.teacher_config)
    if args.student_config:
        student_cfg = load_json_config(args.student_config)
    else:
        layers = args.student_layers or max(1, teacher_cfg["num_hidden_layers"] // 2)
        student_cfg = {**teacher_cfg, "num_hidden_layers": layers}
    teacher_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    teacher = build_model(teacher_cfg, teacher_dtype, device).eval().requires_grad_(False)
    student = build_model(student_cfg, torch.float32, device)
    return teacher, student, teacher_cfg, student_cfg


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    teacher, student, teacher_cfg, student_cfg = models(args, device)
    n_teacher, n_student = linear_params(teacher), linear_params(student)
    if args.precision == "fp8":
        convert_fp8(student)
    if args.compile:  # both sides share the student, so both run the compiled layers
        for layer in decoder_layers(student):
            layer.compile()
    vocab = teacher_cfg["vocab_size"]
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(vocab, (args.batch * 8, args.seq), generator=generator)
    optim = OptimConfig(lr=1e-5, min_lr=1e-6, warmup_steps=10)
    loss = LossConfig(chunk_tokens=args.chunk_tokens)
    layout = Layout(args.batch, 1, 1)
    module = DistillModule(
        student, teacher, tokens, tokens[:1], optim, loss, args.schedule_steps, layout
    )
    options = TrainerOptions(
        max_steps=1, precision=trainer_precision(args.precision, device.type == "cuda"),
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        grad_clip=optim.grad_clip, val_every=10**9, checkpoint_every=10**9,
    )  # fmt: skip
    batches = iter(StepBatches(tokens, 0, layout))
    times = {"minitron": [], "plain": []}
    for r in range(args.rounds):
        for side in ("minitron", "plain") if r % 2 == 0 else ("plain", "minitron"):
            if side == "minitron":
                times[side].append(minitron_round(module, options, args, device))
            else:
                times[side].append(
                    plain_round(student, teacher, module.kd_loss, batches, optim, args, device)
                )
            free(device)
    print(json.dumps(report(args, device, times, n_teacher, n_student, student_cfg)))


def report(args, device, times, n_teacher, n_student, student_cfg) -> dict:
    tokens = args.batch * args.seq * args.steps
    rate = {k: tokens * len(v) / sum(v) for k, v in times.items()}
    out = {
        "tokens_per_s_minitron": round(rate["minitron"], 1),
        "tokens_per_s_plain": round(rate["plain"], 1),
        "ratio": round(rate["minitron"] / rate["plain"], 4),
        "round_tokens_per_s_minitron": [round(tokens / s, 1) for s in times["minitron"]],
        "round_tokens_per_s_plain": [round(tokens / s, 1) for s in times["plain"]],
        "precision": args.precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "seq": args.seq,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "chunk_tokens": args.chunk_tokens,
        "compile": args.compile,
        "teacher_linear_params": n_teacher,
        "student_linear_params": n_student,
        "student_layers": student_cfg["num_hidden_layers"],
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        flops_per_token = 2 * n_teacher + 6 * n_student
        out["flops_per_token"] = flops_per_token
        out["mfu_minitron"] = round(rate["minitron"] * flops_per_token / PEAK_FLOPS, 4)
        out["mfu_plain"] = round(rate["plain"] * flops_per_token / PEAK_FLOPS, 4)
        out["peak_flops"] = PEAK_FLOPS
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


if __name__ == "__main__":
    main()

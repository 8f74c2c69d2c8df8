"""Teacher correction: fine-tune the teacher on the distillation data with LM loss first.

Minitron (arXiv 2408.11796) found the teacher's distribution shifts on data it
was not trained on and corrects it with a short LM fine-tune before distilling.
The corrected teacher is saved as an HF checkpoint of its own in the work folder
(``<work>/teacher-corrected``) and the distillation reads it from there; an
interrupted correction resumes from ``<work>/teacher-correction/checkpoints``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from minitron.distill.settings import LossConfig
from minitron.io import atomic_output_dir

if TYPE_CHECKING:
    from minitron.commands.distill import DistillConfig


def corrected_dir(work: Path) -> Path:
    """Where the corrected teacher is saved."""
    return work / "teacher-corrected"


def correct_teacher(config: DistillConfig, teacher: nn.Module, data: Any, work: Path) -> nn.Module:
    """Fine-tune ``teacher`` with LM loss on ``data.calibration`` (unless done before).

    Trains a float32 copy with the distillation's batch layout; returns the
    corrected teacher in the original teacher's dtype, frozen. The original
    ``teacher`` is not changed.
    """
    from minitron.commands.distill import build_module, trainer_options
    from minitron.distill.run import build_trainer, fit, latest_checkpoint
    from minitron.io import load_model

    folder = corrected_dir(work)
    dtype = next(teacher.parameters()).dtype
    if not (folder / "config.json").is_file():
        step = config.teacher_correction
        model = load_model(config.teacher, "float32", "cpu", config.trust_remote_code)[0].train()
        lm_config = dataclasses.replace(
            config,
            max_steps=step.steps,
            optim=dataclasses.replace(
                config.optim, lr=step.lr, min_lr=step.lr / 10, warmup_steps=step.warmup_steps
            ),
            loss=LossConfig(objective="lm", chunk_tokens=config.loss.chunk_tokens),
            precision="32" if config.precision == "fp8" else config.precision,
        )
        stage = work / "teacher-correction"
        trainer = build_trainer(trainer_options(lm_config), stage)
        module = build_module(
            lm_config, None, model, data.calibration, data.heldout, trainer.world_size
        )
        fit(trainer, module, stage, resume=latest_checkpoint(stage) is not None)
        if trainer.is_global_zero:
            with atomic_output_dir(folder, overwrite=True) as tmp:
                model.to(dtype).save_pretrained(tmp)
        trainer.strategy.barrier()
    corrected = type(teacher).from_pretrained(folder, dtype=dtype, use_safetensors=True)
    return corrected.eval().requires_grad_(False)

"""Running a DistillModule with the Lightning Trainer: callbacks, trainer, checkpoints.

Work-folder layout (outside the final checkpoint, so that one stays atomic)::

    <work>/checkpoints/step-000050.ckpt   Lightning checkpoints (student, optimizer,
    <work>/checkpoints/latest             scheduler, loop, RNG and history state);
                                          ``latest`` names the newest complete one
    <work>/logs/csv/version_N/metrics.csv and <work>/logs/tensorboard/version_N/
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from minitron.distill.module import DistillModule
from minitron.errors import MinitronError
from minitron.progress import console

CHECKPOINTS = "checkpoints"
LATEST = "latest"


@dataclass(frozen=True)
class TrainerOptions:
    """How the Lightning Trainer runs (everything but the model and the data).

    Attributes:
        max_steps: Optimizer steps.
        accumulation: Micro-batches per optimizer step.
        precision: Lightning precision (``bf16-mixed``, ``32-true``, ...).
        strategy: ``auto``, ``ddp``, ``fsdp`` or a Lightning strategy object.
        accelerator: ``auto``, ``cpu``, ``gpu``.
        devices: Devices per node (``auto`` or a count).
        num_nodes: Nodes.
        grad_clip: Global gradient-norm clip, or ``None``.
        val_every: Held-out validation every this many steps (and at the end).
        checkpoint_every: Checkpoint every this many steps (and at the end).
        keep_checkpoints: Newest checkpoints kept (older ones are deleted).
        log_every: Logger rows every this many steps.
    """

    max_steps: int
    accumulation: int = 1
    precision: str = "bf16-mixed"
    strategy: Any = "auto"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    grad_clip: float | None = 1.0
    val_every: int = 50
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1


def latest_checkpoint(work: Path) -> Path | None:
    """The newest complete checkpoint of a work folder, or ``None``."""
    pointer = work / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    path = work / CHECKPOINTS / pointer.read_text().strip()
    return path if path.is_file() else None


class HeldoutValidation(Callback):
    """Held-out loss, perplexity and KL at the start, every ``every`` steps and at the end."""

    def __init__(self, every: int, max_steps: int):
        self.every, self.max_steps = every, max_steps

    def on_train_start(self, trainer: L.Trainer, module: DistillModule) -> None:
        if trainer.global_step == 0 and not module.val_history:
            metrics = module.heldout_metrics(with_teacher=True)
            module.teacher_val = {
                k.removeprefix("teacher_").replace("loss", "val_loss").replace("ppl", "val_ppl"): v
                for k, v in metrics.items()
                if k.startswith("teacher_")
            } or None
            self._record(
                trainer, module, {k: v for k, v in metrics.items() if k.startswith("val_")}
            )

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        boundary = (batch_idx + 1) % module.layout.accumulation == 0
        if boundary and (step % self.every == 0 or step == self.max_steps):
            self._record(trainer, module, module.heldout_metrics())

    @staticmethod
    def _record(trainer: L.Trainer, module: DistillModule, metrics: dict[str, float]) -> None:
        step = trainer.global_step
        row = {"step": step, "tokens": step * module.tokens_per_step, **metrics}
        module.val_history.append(row)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if trainer.is_global_zero:
            text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            console.print(f"step {step}: {text}", highlight=False)


class StepCheckpoint(Callback):
    """Checkpoint every ``every`` steps and at the last step, written atomically.

    Each file is written under a temporary name and renamed; ``latest`` is
    replaced only afterwards, so a run killed at any moment resumes from a
    complete checkpoint. Only the newest ``keep`` checkpoints stay.
    """

    def __init__(self, work: Path, every: int, max_steps: int, keep: int):
        self.folder = work / CHECKPOINTS
        self.every, self.max_steps, self.keep = every, max_steps, keep

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        boundary = (batch_idx + 1) % module.layout.accumulation == 0
        if boundary and (step % self.every == 0 or step == self.max_steps):
            self.save(trainer, step)

    def save(self, trainer: L.Trainer, step: int) -> Path:
        name = f"step-{step:06d}.ckpt"
        final, tmp = self.folder / name, self.folder / f".{name}.tmp"
        trainer.save_checkpoint(tmp)  # a collective under FSDP; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, final)
            pointer = self.folder / f".{LATEST}.tmp"
            pointer.write_text(name + "\n")
            os.replace(pointer, self.folder / LATEST)
            old = sorted(self.folder.glob("step-*.ckpt"))[: -self.keep]
            for path in old:
                path.unlink(missing_ok=True)
        trainer.strategy.barrier()
        return final


class StepProgress(Callback):
    """A rich bar over optimizer steps with the loss and tokens/s (rank 0, terminals only)."""

    def __init__(self, max_steps: int, label: str = "distill", metric: str = "loss"):
        self.max_steps, self.label, self.metric = max_steps, label, metric
        self.bar: Any = None

    def on_train_start(self, trainer: L.Trainer, module: DistillModule) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if not (trainer.is_global_zero and console.is_terminal):
            return
        self.bar = Progress(
            TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
            transient=True,
        )  # fmt: skip
        self.bar.start()
        self.task = self.bar.add_task("", total=self.max_steps, completed=trainer.global_step,
                                      info="")  # fmt: skip

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.bar is None or (batch_idx + 1) % module.layout.accumulation:
            return
        metrics = trainer.progress_bar_metrics
        info = f"{self.metric} {metrics.get(self.metric, float('nan')):.4f}"
        if "tok/s" in metrics:
            info += f"  {metrics['tok/s']:,.0f} tok/s"
        self.bar.update(self.task, completed=trainer.global_step, info=info)

    def on_train_end(self, trainer: L.Trainer, module: DistillModule) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def on_exception(self, trainer: L.Trainer, module: DistillModule, err: BaseException) -> None:
        self.on_train_end(trainer, module)


def build_trainer(options: TrainerOptions, work: Path) -> L.Trainer:
    """A Lightning Trainer with minitron's validation and checkpoint callbacks,
    writing CSV and TensorBoard logs under ``work/logs``."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    quiet_lightning()
    loggers = [
        CSVLogger(work / "logs", name="csv"),
        TensorBoardLogger(work / "logs", name="tensorboard", default_hp_metric=False),
    ]
    return L.Trainer(
        max_steps=options.max_steps,
        accumulate_grad_batches=options.accumulation,
        precision=options.precision,
        strategy=options.strategy,
        accelerator=options.accelerator,
        devices=options.devices,
        num_nodes=options.num_nodes,
        gradient_clip_val=options.grad_clip,
        limit_val_batches=0,  # held-out validation runs in HeldoutValidation instead
        num_sanity_val_steps=0,
        enable_checkpointing=False,  # StepCheckpoint writes them
        enable_model_summary=False,
        enable_progress_bar=False,  # StepProgress counts optimizer steps, not micro-batches
        callbacks=[
            HeldoutValidation(options.val_every, options.max_steps),
            StepCheckpoint(
                work, options.checkpoint_every, options.max_steps, options.keep_checkpoints
            ),
            StepProgress(options.max_steps),
        ],
        logger=loggers,
        log_every_n_steps=options.log_every,
        default_root_dir=work,
        use_distributed_sampler=False,  # StepBatches shards by rank itself
    )


def fit(trainer: L.Trainer, module: DistillModule, work: Path, resume: bool) -> None:
    """Train ``module`` (in place), resuming from ``work``'s latest checkpoint if asked.

    Raises:
        MinitronError: On ``resume`` without a checkpoint, or a NaN/inf loss
            (the checkpoints written so far are kept).
    """
    ckpt = latest_checkpoint(work) if resume else None
    if resume and ckpt is None:
        raise MinitronError(f"nothing to resume: no checkpoint in {work / CHECKPOINTS}")
    (work / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(module, ckpt_path=ckpt, weights_only=True if ckpt else None)
    except (MinitronError, SIGTERMException) as err:
        last = latest_checkpoint(work)
        kept = f"; last good checkpoint: {last} (--resume continues from it)" if last else ""
        reason = (
            str(err)
            if isinstance(err, MinitronError)
            else f"stopped by SIGTERM after step {trainer.global_step}"
        )
        raise MinitronError(f"{reason}{kept}") from None


def quiet_lightning() -> None:
    """Keep Lightning's info lines and known-harmless warnings off the console."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*IterableDataset.*",
        ".*Checkpoint directory.*",
        ".*on_train_batch_end.*",
        ".*gradient_clip.*",
        ".*no val_dataloader.*",
        ".*`training_step` returned.*",
        ".*module\\(s\\) in eval mode.*",  # BLD: the frozen parent stays in eval mode
        ".*LeafSpec.*",  # Lightning's own use of a deprecated torch pytree API
    ):
        warnings.filterwarnings("ignore", message=pattern)
    torch.set_float32_matmul_precision("high")

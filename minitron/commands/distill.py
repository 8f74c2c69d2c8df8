"""The ``minitron distill`` command: its typed config, checks, and the run.

The training itself lives in ``minitron.distill`` (data order, LightningModule,
trainer and callbacks); this module loads the models and data, checks them
against each other, runs the stages and writes the final checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from minitron.config import DistillDataConfig, Dtype
from minitron.distill.data import Layout, passes_needed
from minitron.distill.precision import (
    AS_SET,
    Precision,
    convert_fp8,
    resolve_precision,
    trainer_precision,
)
from minitron.distill.settings import LossConfig, OptimConfig
from minitron.errors import MinitronError
from minitron.io import check_output_dir, load_config, resolve_model

if TYPE_CHECKING:  # Lightning is imported only when a run starts
    from minitron.distill.module import DistillModule


@dataclasses.dataclass(frozen=True)
class TeacherCorrectionConfig:
    """Fine-tune the teacher on the distillation data with LM loss first (the paper's step).

    Attributes:
        enabled: Run it.
        steps: Optimizer steps (same batch layout as the distillation).
        lr: Peak learning rate (cosine to a tenth of it).
        warmup_steps: Linear warmup steps.
    """

    enabled: bool = False
    steps: int = 100
    lr: float = 1e-5
    warmup_steps: int = 10


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """``minitron distill``: recover a pruned student by distilling its parent's logits.

    Attributes:
        teacher: Model spec of the teacher (the parent), frozen.
        student: Model spec of the student (the pruned checkpoint).
        data: Training and held-out text: ``samples`` training sequences and
            ``heldout`` validation sequences of ``seq_len`` tokens packed in memory,
            or ``prepared`` datasets read as a blend (``minitron data prepare``);
            ``batch_size`` is the micro-batch per device.
        max_steps: Optimizer steps.
        grad_accum: Micro-batches per optimizer step and device. The global
            batch is ``batch_size · grad_accum · devices · num_nodes`` sequences.
        seed: Seed of the training order (and of torch's RNG).
        optim: AdamW and the warmup + cosine schedule.
        loss: KD objective (forward KL at ``temperature``; optional LM weight, top-k).
        precision: ``auto`` (default: ``bf16-mixed`` where bf16 is native, on CUDA
            with bf16 tensor cores or a CPU with AVX512-BF16 / AMX, else ``32``),
            ``bf16-mixed``, ``32`` or ``fp8`` (torchao, student Linears).
        teacher_dtype: dtype the frozen teacher is held in (``auto``: bf16 on CUDA, fp32 on CPU).
        strategy: ``auto``, ``ddp`` or ``fsdp`` (student sharded by decoder layer).
        accelerator: ``auto``, ``cpu`` or ``gpu``.
        devices: Devices per node: ``auto`` or a count.
        num_nodes: Nodes (torchrun or SLURM set the ranks).
        activation_checkpointing: Recompute decoder layers in the backward.
        compile_layers: ``torch.compile`` each student decoder layer; ``None``
            (default) turns it on for ``fp8`` on CUDA, where torchao's scaling
            and casts run as separate kernels without it (measured on an H200:
            fp8 was 0.75x bf16 uncompiled, 1.21x compiled).
        val_every: Held-out validation every N steps (also at the start and the end).
        checkpoint_every: Checkpoint every N steps (also at the end).
        keep_checkpoints: Newest checkpoints kept in the work folder.
        log_every: CSV / TensorBoard rows every N steps.
        teacher_correction: Optional LM fine-tune of the teacher before distilling.
        output: Output folder; default ``runs/<recipe folder>/<recipe name>``.
        trust_remote_code: Allow a Hub model's own code to run.
    """

    teacher: str
    student: str
    data: DistillDataConfig = dataclasses.field(default_factory=DistillDataConfig)
    max_steps: int = 100
    grad_accum: int = 1
    seed: int = 0
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    precision: Precision = "auto"
    teacher_dtype: Dtype = "auto"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    activation_checkpointing: bool = False
    compile_layers: bool | None = None
    val_every: int = 50
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    teacher_correction: TeacherCorrectionConfig = dataclasses.field(
        default_factory=TeacherCorrectionConfig
    )
    output: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "num_nodes", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise MinitronError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.keep_checkpoints < 1:
            raise MinitronError(
                f"keep_checkpoints must be at least 1 (got {self.keep_checkpoints})"
            )
        if isinstance(self.devices, str) and self.devices != "auto":
            raise MinitronError(f"devices must be auto or a count (got {self.devices!r})")
        if self.data.heldout < 1:
            raise MinitronError("data.heldout must be at least 1: validation needs held-out text")


def work_dir(output: str | Path) -> Path:
    """The run's work folder (checkpoints, logs): ``<output>.work`` beside the output."""
    output = Path(output).expanduser()
    return output.parent / f"{output.name}.work"


def is_primary() -> bool:
    """Whether this process is global rank 0 (before any process group exists)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def check_inputs(config: DistillConfig, output: Path, overwrite: bool, resume: bool) -> Path:
    """Everything checkable before weights load; returns the work folder.

    On rank 0 a fresh run with ``overwrite`` clears an old work folder.
    """
    from minitron.distill.run import latest_checkpoint

    check_output_dir(output, overwrite, protect=[config.teacher, config.student])
    if config.strategy == "fsdp" and (config.accelerator == "cpu" or not torch.cuda.is_available()):
        raise MinitronError("strategy: fsdp needs CUDA GPUs (use ddp on CPU)")
    for role in ("teacher", "student"):
        spec = getattr(config, role)
        try:
            resolve_model(spec)
        except MinitronError as err:
            raise MinitronError(f"{role}: {err}") from None
    teacher_cfg = load_config(config.teacher, config.trust_remote_code)
    student_cfg = load_config(config.student, config.trust_remote_code)
    if teacher_cfg.vocab_size != student_cfg.vocab_size:
        raise MinitronError(
            f"teacher and student vocabularies differ ({teacher_cfg.vocab_size} vs "
            f"{student_cfg.vocab_size} tokens): distillation needs the same tokenizer"
        )
    limit = min(
        getattr(c, "max_position_embeddings", None) or 1 << 30 for c in (teacher_cfg, student_cfg)
    )
    if config.data.seq_len > limit:
        raise MinitronError(
            f"data.seq_len {config.data.seq_len} exceeds the models' {limit} positions"
        )
    work = work_dir(output)
    has_checkpoint = latest_checkpoint(work) is not None
    if resume and not has_checkpoint:
        raise MinitronError(f"nothing to resume: no checkpoint in {work / 'checkpoints'}")
    if not resume and has_checkpoint and is_primary():
        if not overwrite:
            raise MinitronError(
                f"{work} holds checkpoints of an earlier run: pass --resume to continue it "
                "or --overwrite to start over"
            )
        shutil.rmtree(work)
    return work


def check_tokenizers(teacher_tok: Any, student_tok: Any) -> None:
    """Same vocabulary, token for token, or a one-line error."""
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise MinitronError(
            "teacher and student tokenizers differ: distillation needs the same vocabulary"
        )


def prepare_student(student: nn.Module, config: DistillConfig) -> nn.Module:
    """Train mode, optional activation checkpointing and fp8, in place."""
    student.train()
    if config.activation_checkpointing and config.strategy != "fsdp":  # FSDP wraps layers itself
        student.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    if config.precision == "fp8":
        convert_fp8(student)
    if compiles_layers(config, on_cuda=trains_on_cuda(config)):
        from minitron.layers import decoder_layers

        for layer in decoder_layers(student):
            layer.compile()  # in place: parameter names, checkpoints and export unchanged
    return student


def compiles_layers(config: DistillConfig, on_cuda: bool) -> bool:
    """Whether the student's decoder layers are compiled (see ``compile_layers``)."""
    if config.compile_layers is not None:
        return config.compile_layers
    return config.precision == "fp8" and on_cuda


def strategy_for(config: DistillConfig, student: nn.Module) -> Any:
    """Lightning strategy: FSDP wraps each decoder layer of the student."""
    if config.strategy != "fsdp":
        return config.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    from minitron.layers import decoder_layers

    layer_class = type(decoder_layers(student)[0])
    return FSDPStrategy(
        auto_wrap_policy={layer_class},
        activation_checkpointing_policy={layer_class} if config.activation_checkpointing else None,
        state_dict_type="full",
    )


def build_module(
    config: DistillConfig,
    teacher: nn.Module | None,
    student: nn.Module,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    world_size: int = 1,
) -> DistillModule:
    """The LightningModule of a recipe, for scripts and benchmarks as well as the CLI."""
    from minitron.distill.module import DistillModule

    layout = Layout(config.data.batch_size, config.grad_accum, world_size)
    return DistillModule(
        student, teacher, train_tokens, val_tokens, config.optim, config.loss,
        config.max_steps, layout, config.seed,
    )  # fmt: skip


def trains_on_cuda(config: DistillConfig) -> bool:
    """Whether the run trains on CUDA."""
    return config.accelerator != "cpu" and torch.cuda.is_available()


def with_precision(config: DistillConfig) -> tuple[DistillConfig, str]:
    """``config`` with ``precision: auto`` resolved for this machine, and why."""
    precision, reason = resolve_precision(config.precision, trains_on_cuda(config))
    if precision == "bf16-mixed" and not trains_on_cuda(config):
        from minitron.hardware import cpu_bf16_native

        native, why = cpu_bf16_native()
        if not native:
            reason += f"; {why} (precision: 32 is several times faster here)"
    return dataclasses.replace(config, precision=precision), reason


def trainer_options(config: DistillConfig, max_steps: int | None = None) -> Any:
    """The ``TrainerOptions`` of a recipe (``precision: auto`` resolved by ``with_precision``)."""
    from minitron.distill.run import TrainerOptions

    if config.precision == "auto":
        config = with_precision(config)[0]
    return TrainerOptions(
        max_steps=max_steps or config.max_steps,
        accumulation=config.grad_accum,
        precision=trainer_precision(config.precision, trains_on_cuda(config)),
        strategy=config.strategy,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        grad_clip=config.optim.grad_clip,
        val_every=config.val_every,
        checkpoint_every=config.checkpoint_every,
        keep_checkpoints=config.keep_checkpoints,
        log_every=config.log_every,
    )


def wrap_note(sequences: int, config: DistillConfig, layout: Layout) -> str | None:
    """A warning when the run reads its training data more than once."""
    passes = passes_needed(sequences, config.max_steps, layout)
    if passes <= 1:
        return None
    return (
        f"the run wraps around its data: {config.max_steps} steps x {layout.global_batch} "
        f"sequences read {sequences} training sequences {passes:.2f} times "
        "(each pass in a new seeded order)"
    )


class PreparedDistillData:
    """The prepared datasets of a run: checked against the student's tokenizer before
    weights load, against the run's length once the global batch is known, and handed
    to the module as a ``LazyBlend`` (``calibration``; ``heldout`` is ``None``: the
    blend has its own held-out split)."""

    def __init__(self, config: DistillConfig, work: Path):
        from minitron.distill.prepared import check_prepared_run
        from minitron.io import load_tokenizer
        from minitron.prepared.build import vocab_hash
        from minitron.prepared.read import Prepared

        self.config = config
        data = config.data
        self.sources = [Prepared(p.path, p.weight) for p in data.prepared]
        tokenizer = load_tokenizer(config.student, config.trust_remote_code)
        self.vocab = vocab_hash(tokenizer)
        self.vocab_size, self.eod = len(tokenizer), tokenizer.eos_token_id
        self.cache_dir = str(Path(data.index_cache) if data.index_cache else work / "index-cache")
        self.run = check_prepared_run(self.sources, data.seq_len, self.vocab)
        self.notes = [
            "data.prepared is read: data.source, subset, split, text_column, streaming and "
            "samples are not used"
        ] + [
            f"{path} has no data.json beside it (prepared elsewhere?): its vocabulary is not "
            "checked against the student's"
            for path in self.run.unverified
        ]
        self.heldout = None

    @property
    def calibration(self):
        """A fresh ``LazyBlend`` (teacher correction and distillation each build their own)."""
        from minitron.distill.prepared import LazyBlend

        data = self.config.data
        self.blend = LazyBlend(
            self.run, self.config.seed, data.heldout, self.vocab_size, self.eod, self.cache_dir
        )
        return self.blend

    def check(self, sequences: int) -> None:
        """Refuse a run that reads a dataset more than ``data.max_epochs`` times."""
        self.run.train_tokens = sequences * self.config.data.seq_len
        self.run.refuse_beyond(self.config.data.max_epochs)

    def passes(self, sequences: int) -> float:
        """The most times the first ``sequences`` positions read any dataset."""
        return max(self.run.epochs(sequences * self.config.data.seq_len).values())

    def note(self, sequences: int) -> str:
        tokens = sequences * self.config.data.seq_len
        distinct = sum(self.run.tokens.values())
        return (
            f"the run reads {tokens:,} tokens from {len(self.sources)} prepared dataset(s) of "
            f"{distinct:,} tokens (at most {self.passes(sequences):.2f} epochs of any)"
        )

    @property
    def info(self) -> dict[str, Any]:
        return self.run.info()


def prepared_data(config: DistillConfig, work: Path) -> PreparedDistillData:
    """The checked prepared datasets of ``config`` (before any weights load)."""
    return PreparedDistillData(config, work)


def load_pair(config: DistillConfig) -> tuple[nn.Module, nn.Module, Any]:
    """Teacher (frozen, in ``teacher_dtype``) and student (fp32 master weights) on the CPU."""
    from minitron.io import load_model

    teacher_dtype = config.teacher_dtype
    if teacher_dtype == "auto":
        teacher_dtype = "bfloat16" if trains_on_cuda(config) else "float32"
    teacher, teacher_tok = load_model(
        config.teacher, teacher_dtype, "cpu", config.trust_remote_code
    )
    student, student_tok = load_model(config.student, "float32", "cpu", config.trust_remote_code)
    check_tokenizers(teacher_tok, student_tok)
    teacher.requires_grad_(False)
    return teacher, student, student_tok


def run_distill(
    config: DistillConfig, output: str | Path, overwrite: bool = False, resume: bool = False
) -> dict[str, Any] | None:
    """Distil ``config.teacher`` into ``config.student`` and save the student to ``output``.

    Checks inputs and the output folder before any weights load; checkpoints
    and logs go to ``<output>.work``; the final HF checkpoint (the student's own
    class, its own dtype) with ``distill.json`` and ``loss_curve.png`` is
    written atomically on rank 0.

    Returns:
        The ``distill.json`` record on rank 0, ``None`` on other ranks.
    """
    from minitron.data import load_text_data
    from minitron.distill.export import export_student, saved_dtype
    from minitron.distill.run import build_trainer, fit
    from minitron.io import load_model

    output = Path(output).expanduser()
    work = check_inputs(config, output, overwrite, resume)
    recipe = dataclasses.asdict(config)
    config, precision_reason = with_precision(config)
    prepared = prepared_data(config, work) if config.data.prepared else None
    teacher, student, tokenizer = load_pair(config)
    dtype = saved_dtype(student, config.student)
    data = prepared or load_text_data(config.data, tokenizer)
    torch.manual_seed(config.seed)
    if config.teacher_correction.enabled:
        teacher = correct_teacher(config, teacher, data, work)
    prepare_student(student, config)
    options = dataclasses.replace(trainer_options(config), strategy=strategy_for(config, student))
    trainer = build_trainer(options, work)
    module = build_module(
        config, teacher, student, data.calibration, data.heldout, trainer.world_size
    )
    if prepared:
        prepared.check(config.max_steps * module.layout.global_batch)
        note = prepared.note(config.max_steps * module.layout.global_batch)
    else:
        note = wrap_note(len(data.calibration), config, module.layout)
    if trainer.is_global_zero:
        from minitron.progress import console

        if precision_reason != AS_SET:  # chosen by auto, or forced bf16 that is emulated here
            console.print(f"precision: {config.precision} ({precision_reason})", highlight=False)
        for line in prepared.notes if prepared else []:
            console.print(f"[yellow]note:[/] {line}", highlight=False)
        if note:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
    fit(trainer, module, work, resume)
    state = trainer.strategy.lightning_module_state_dict()  # a collective under FSDP
    if not trainer.is_global_zero:
        return None
    if config.strategy == "fsdp":  # the wrapped student is sharded: export into a fresh copy
        student = load_model(config.student, "float32", "cpu", config.trust_remote_code)[0]
    record = {
        "kind": "distill",
        "teacher": config.teacher,
        "student": config.student,
        "output": str(output),
        "work": str(work),
        "steps": trainer.global_step,
        "tokens_seen": trainer.global_step * module.tokens_per_step,
        "global_batch": module.layout.global_batch,
        "data_passes": round(
            prepared.passes(trainer.global_step * module.layout.global_batch)
            if prepared
            else passes_needed(len(data.calibration), trainer.global_step, module.layout),
            4,
        ),
        "data": data.info,
        "start": module.val_history[0] if module.val_history else None,
        "final": module.val_history[-1] if module.val_history else None,
        "teacher_val": module.teacher_val,
        "history": module.history,
        "val_history": module.val_history,
        "precision": config.precision,
        "precision_reason": precision_reason,
        "recipe": recipe,
    }
    if prepared:
        sequences = trainer.global_step * module.layout.global_batch
        record["tokens_per_source"] = module.blend.tokens_per_source(sequences)
    return export_student(config, state, student, tokenizer, output, overwrite, dtype, record)


def corrected_dir(work: Path) -> Path:
    """Where the corrected teacher is saved."""
    return work / "teacher-corrected"


def correct_teacher(config: DistillConfig, teacher: nn.Module, data: Any, work: Path) -> nn.Module:
    """Teacher correction (Minitron, arXiv 2408.11796): LM fine-tune of the teacher.

    Fine-tunes ``teacher`` with LM loss on ``data.calibration`` (unless done before).

    Trains a float32 copy with the distillation's batch layout; returns the
    corrected teacher in the original teacher's dtype, frozen. The original
    ``teacher`` is not changed. It is saved as ``<work>/teacher-corrected``;
    an interrupted correction resumes from ``<work>/teacher-correction``.
    """
    from minitron.distill.run import build_trainer, fit, latest_checkpoint
    from minitron.io import atomic_output_dir, load_model

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

"""The LightningModule of a distillation run: student trains, teacher is frozen.

The teacher is deliberately NOT a registered submodule: it is stored out of
the module tree so it never enters the checkpoint, the optimizer, DDP's
gradient buckets or FSDP's sharding. Each rank holds a full copy of it in
inference mode (no gradients; see docs/distill.md for why).
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader

from minitron.distill.data import Layout, StepBatches, rank_shard
from minitron.distill.loss import ChunkedKDLoss
from minitron.distill.settings import LossConfig, OptimConfig, lr_factor
from minitron.errors import MinitronError


class NonFiniteLoss(MinitronError):
    """The training loss became NaN or infinite."""


def final_hidden(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``[B, T, H]`` normed last hidden states of ``model`` (no logits are computed)."""
    return model.model(input_ids=ids, use_cache=False).last_hidden_state


def chunked_lm_loss(
    hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Mean next-token cross-entropy of ``hidden`` [N, H] against ``labels`` [N].

    Logits ``[chunk, V]`` exist one chunk at a time; the backward recomputes
    them (activation checkpointing per chunk), so no ``[N, V]`` tensor is kept.
    """

    def chunk_sum(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(rows).float(), targets, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for rows, targets in zip(hidden.split(chunk), labels.split(chunk), strict=True):
        total = total + checkpoint(chunk_sum, rows, targets, use_reentrant=False)
    return total / labels.numel()


class DistillModule(L.LightningModule):
    """Distil ``teacher`` into ``student`` (or train ``student`` on LM loss alone).

    Args:
        student: Causal LM to train (``.model(...)`` giving ``last_hidden_state``
            and ``.lm_head``); changed in place by training.
        teacher: Frozen causal LM with the same vocabulary, or ``None`` for LM
            training alone (teacher correction). Never changed.
        train_tokens: ``[N, T]`` packed training sequences, or a ``LazyBlend`` of
            prepared datasets (built in ``setup``).
        val_tokens: ``[M, T]`` held-out sequences, never trained on (``None`` with a
            ``LazyBlend``, which has its own).
        optim: Optimizer and schedule.
        loss: Objective.
        max_steps: Optimizer steps of the whole run (for the schedule).
        layout: Micro-batch, accumulation and world size.
        seed: Seed of the training order.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        train_tokens: Any,
        val_tokens: torch.Tensor | None,
        optim: OptimConfig,
        loss: LossConfig,
        max_steps: int,
        layout: Layout,
        seed: int = 0,
    ):
        super().__init__()
        self.student = student
        self._teacher = (teacher,) if teacher is not None else ()  # a tuple hides it from nn
        self.train_tokens, self.val_tokens = train_tokens, val_tokens
        self.blend = None  # the LazyBlend of a prepared-data run, once set up
        self.optim, self.loss_config = optim, loss
        self.max_steps, self.layout, self.seed = max_steps, layout, seed
        self.kd_loss = ChunkedKDLoss(
            loss.temperature, loss.top_k, loss.lm_weight, loss.chunk_tokens, loss.grad_in_forward
        )
        self.val_kl = ChunkedKDLoss(1.0, None, 0.0, chunk_tokens=loss.chunk_tokens)
        self.history: list[dict[str, float]] = []
        self.val_history: list[dict[str, float]] = []
        self.teacher_val: dict[str, float] | None = None
        self._running = 0.0
        self._step_started = time.perf_counter()

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    @property
    def tokens_per_step(self) -> int:
        return self.layout.global_batch * self.seq_len

    @property
    def seq_len(self) -> int:
        """Tokens per training sequence."""
        lazy = getattr(self.train_tokens, "seq_len", None)
        return lazy if lazy is not None else self.train_tokens.shape[1]

    def setup(self, stage: str) -> None:
        """Prepared data: build the blend now that every rank has its process group
        (rank 0 writes megatron-core's index caches; the others read them)."""
        if hasattr(self.train_tokens, "open"):
            self.blend = self.train_tokens
            # Two steps of slack: the loader fetches ahead of the step that ends the run.
            self.train_tokens, self.val_tokens = self.blend.open(
                (self.max_steps + 2) * self.layout.global_batch
            )

    # ---- setup ----
    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device).eval().requires_grad_(False)
        self.student.train()
        self._step_started = time.perf_counter()

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = self.optim
        optimizer = torch.optim.AdamW(
            params, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay
        )
        ratio, warmup, steps = (
            opt.min_lr / opt.lr if opt.lr else 1.0,
            opt.warmup_steps,
            self.max_steps,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup, steps, ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        stream = StepBatches(
            self.train_tokens, self.seed, self.layout, self.global_rank, self.trainer.global_step
        )
        return DataLoader(stream, batch_size=None)

    # ---- training ----
    def objective(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Loss of one micro-batch ``ids`` [m, T] and its mean KL (``None`` for LM)."""
        hidden = final_hidden(self.student, ids)[:, :-1]  # [m, T-1, H_s]
        labels = ids[:, 1:].reshape(-1)  # [N]
        rows = hidden.reshape(-1, hidden.shape[-1])  # [N, H_s]
        if self.loss_config.objective == "lm" or self.teacher is None:
            return chunked_lm_loss(
                rows, self.student.lm_head, labels, self.kd_loss.chunk_tokens
            ), None
        with torch.no_grad():
            target = final_hidden(self.teacher, ids)[:, :-1]  # [m, T-1, H_t]
        out = self.kd_loss(
            rows,
            self.student.lm_head,
            target.reshape(-1, target.shape[-1]),
            self.teacher.lm_head,
            labels,
        )
        return out.loss, out.kl

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss, _ = self.objective(batch)
        self._running = self._running + loss.detach().float()
        if (batch_idx + 1) % self.layout.accumulation == 0:
            self._record_step()
        return loss

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the global gradient norm; under FSDP through the sharded root.

        Lightning's FSDP precision plugin refuses norm clipping because only the
        FSDP root can compute the norm over every shard (found on an H200).
        """
        if gradient_clip_val is None:
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = self.trainer.strategy.model
        if isinstance(root, FullyShardedDataParallel):
            root.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _record_step(self) -> None:
        """All ranks: reduce the step's mean loss, stop on NaN/inf, log and keep it."""
        mean = self.trainer.strategy.reduce(
            self._running / self.layout.accumulation, reduce_op="mean"
        )
        self._running = 0.0
        value, step = float(mean), self.trainer.global_step + 1
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"training loss is {value} at step {step}; stopped before applying it"
            )
        now = time.perf_counter()
        tokens_per_s = self.tokens_per_step / max(now - self._step_started, 1e-9)
        self._step_started = now
        lr = self.lr_schedulers().get_last_lr()[0]
        record = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "train_loss": value,
            "lr": lr,
            "tokens_per_s": round(tokens_per_s, 2),  # wall time since the previous step's record
        }
        self.history.append(record)
        self.log_dict({"train_loss": value, "lr": lr}, on_step=True, rank_zero_only=True)
        self.log("tok/s", tokens_per_s, on_step=True, prog_bar=True, rank_zero_only=True)
        self.log("loss", value, on_step=True, prog_bar=True, logger=False, rank_zero_only=True)

    # ---- validation ----
    @torch.no_grad()
    def heldout_metrics(self, with_teacher: bool = False) -> dict[str, float]:
        """Student loss, perplexity and KL to the teacher on the held-out split, all ranks
        together. Does not change either model (train mode is restored).

        Under DDP each rank scores its share and the sums are added. Under FSDP
        every rank scores the whole split through the sharded root's forward
        (which gathers the weights), so all ranks make the same collective calls.
        """
        from lightning.pytorch.strategies import FSDPStrategy

        sharded = self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy)
        rank, world = (0, 1) if sharded else (self.global_rank, self.layout.world_size)
        run = self.trainer.strategy.model if sharded else self
        was_training = self.student.training
        self.student.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # ce, kl, tokens, teacher ce
        for ids in rank_shard(self.val_tokens, rank, world).split(self.layout.micro_batch):
            sums += run(ids.to(self.device), with_teacher)
        self.student.train(was_training)
        if not sharded and self._trainer is not None:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        ce, kl, tokens, teacher_ce = sums.tolist()
        tokens = max(tokens, 1.0)
        metrics = {"val_loss": ce / tokens, "val_ppl": math.exp(ce / tokens)}
        if self.teacher is not None:
            metrics["val_kl"] = kl / tokens
        if with_teacher and self.teacher is not None:
            metrics["teacher_loss"] = teacher_ce / tokens
            metrics["teacher_ppl"] = math.exp(teacher_ce / tokens)
        return metrics

    def forward(self, ids: torch.Tensor, with_teacher: bool = False) -> torch.Tensor:
        """``[4]`` float64 held-out sums of ``ids`` [m, T]: student CE, KL to the teacher,
        tokens, teacher CE (the last only ``with_teacher``)."""
        hidden = final_hidden(self.student, ids)[:, :-1]
        rows, labels = hidden.reshape(-1, hidden.shape[-1]), ids[:, 1:].reshape(-1)
        count = labels.numel()
        if self.teacher is None:
            ce = chunked_lm_loss(rows, self.student.lm_head, labels, self.val_kl.chunk_tokens)
            return torch.tensor(
                [float(ce) * count, 0.0, count, 0.0], dtype=torch.float64, device=self.device
            )
        target = final_hidden(self.teacher, ids)[:, :-1]
        target = target.reshape(-1, target.shape[-1])
        out = self.val_kl(rows, self.student.lm_head, target, self.teacher.lm_head, labels)
        teacher_ce = 0.0
        if with_teacher:
            teacher_ce = float(
                chunked_lm_loss(target, self.teacher.lm_head, labels, self.val_kl.chunk_tokens)
            )
        values = [float(out.ce) * count, float(out.kl) * count, count, teacher_ce * count]
        return torch.tensor(values, dtype=torch.float64, device=self.device)

    # ---- checkpoint state beyond weights and optimizer ----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["minitron"] = {
            "history": self.history,
            "val_history": self.val_history,
            "teacher_val": self.teacher_val,
            "layout": [self.layout.micro_batch, self.layout.accumulation, self.layout.world_size],
            "seed": self.seed,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("minitron")
        if state is None:
            raise MinitronError("checkpoint was not written by minitron distill")
        lay = self.layout
        if state["layout"][0] * state["layout"][1] * state["layout"][2] != lay.global_batch:
            raise MinitronError(
                f"cannot resume: the checkpoint's global batch is {state['layout']} "
                f"(micro-batch, accumulation, ranks), this run's {lay.global_batch} sequences"
            )
        if state["seed"] != self.seed:
            raise MinitronError(
                f"cannot resume: the checkpoint was trained with seed {state['seed']}, "
                f"this run has seed {self.seed} (the data order would change)"
            )
        self.history, self.val_history = list(state["history"]), list(state["val_history"])
        self.teacher_val = state["teacher_val"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])

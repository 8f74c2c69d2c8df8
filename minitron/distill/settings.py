"""The training settings a distillation run and its LightningModule share.

Kept apart from the command's own config (``minitron.commands.distill``) so the
module can be built from a script without the CLI.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from minitron.errors import MinitronError


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, then cosine decay to ``min_lr`` at ``max_steps``.

    Attributes:
        lr: Peak learning rate, reached after ``warmup_steps``.
        min_lr: Learning rate at the last step.
        warmup_steps: Linear warmup steps (from ``lr / warmup_steps``).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        eps: AdamW epsilon.
        grad_clip: Clip the global gradient norm to this (``null``: no clipping).
    """

    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 50
    weight_decay: float = 0.0
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_lr <= self.lr:
            raise MinitronError(f"optim: need 0 <= min_lr <= lr (got {self.min_lr}, {self.lr})")
        if self.warmup_steps < 0:
            raise MinitronError(f"optim.warmup_steps must be 0 or more (got {self.warmup_steps})")
        if len(self.betas) != 2:
            raise MinitronError(f"optim.betas must be two numbers (got {self.betas})")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise MinitronError(f"optim.grad_clip must be positive or null (got {self.grad_clip})")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """What the student learns from.

    Attributes:
        objective: ``kd`` (forward KL to the teacher's logits, plus ``lm_weight``
            times the LM loss) or ``lm`` (the LM loss alone; the teacher is then
            used only for validation KL).
        temperature: KD temperature T; the KL is scaled by T².
        top_k: Keep only the teacher's k largest logits (renormalised).
        lm_weight: Weight of the student's LM cross-entropy next to the KL.
        chunk_tokens: Tokens per chunk of logits in the loss.
        grad_in_forward: Let the KD loss compute its gradients in the forward
            (fewer head matmuls, more memory held; see docs/kd-loss.md).
    """

    objective: Literal["kd", "lm"] = "kd"
    temperature: float = 1.0
    top_k: int | None = None
    lm_weight: float = 0.0
    chunk_tokens: int = 256
    grad_in_forward: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise MinitronError(f"loss.temperature must be positive (got {self.temperature})")
        if self.top_k is not None and self.top_k < 1:
            raise MinitronError(f"loss.top_k must be at least 1 or null (got {self.top_k})")
        if self.lm_weight < 0:
            raise MinitronError(f"loss.lm_weight must be 0 or more (got {self.lm_weight})")
        if self.chunk_tokens < 1:
            raise MinitronError(f"loss.chunk_tokens must be at least 1 (got {self.chunk_tokens})")


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-indexed).

    Linear warmup ``(step + 1) / warmup`` for the first ``warmup`` steps, then
    cosine from 1 down to ``min_ratio`` at the last step ``max_steps - 1``.
    """
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, max_steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

"""Forward KL(teacher ‖ student) on logits, computed chunk by chunk over tokens.

`ChunkedKDLoss` never holds full [N, V] logits: it takes the final hidden states and
the LM heads, computes one chunk of logits at a time in the forward, and (by default)
recomputes each chunk in the backward, accumulating the gradients of the student's
hidden states and head weight chunk by chunk (a custom autograd Function in
`kd_function.py`, which also has the other schedule: gradients in the forward).
`plain_kd_loss` is the same definition written the plain way, on full logits, for
tests and benchmarks.

Definitions (p = softmax(logits / T), N tokens, D = tokens whose label != -100, or N
when no labels are given):

    loss = T² · (1/D) Σ_tokens KL(p_teacher ‖ p_student) + lm_weight · mean CE(student)

Top-k: the teacher distribution is restricted to its k largest logits and renormalised
over them (zero elsewhere); the student keeps its full-vocabulary softmax. The KL is
then a true KL between two distributions over the whole vocabulary, and its gradient
still pushes the student's mass off the tokens outside the teacher's top k. With
top-k, student = teacher gives -log(teacher's top-k mass), not 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minitron.distill.kd_function import ChunkedKDFunction, KDOptions, softmax_dtype

IGNORE_INDEX = -100


@dataclass(frozen=True)
class KDLossOutput:
    """What `ChunkedKDLoss` returns.

    Attributes:
        loss: differentiable scalar, T² · mean KL + lm_weight · mean CE.
        kl: detached scalar, the mean true KL(teacher ‖ student) at temperature T
            (not the cross-entropy H(p_t, p_s)).
        ce: detached scalar, the student's mean LM cross-entropy (at T = 1), or None
            when no labels were given.
        tokens: the number of tokens averaged over (D).
    """

    loss: Tensor
    kl: Tensor
    ce: Tensor | None
    tokens: int


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    """The matmul dtype: the autocast dtype when autocast is on, else the hidden's."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


class ChunkedKDLoss(nn.Module):
    """Forward KL(teacher ‖ student) at temperature T from hidden states, chunked over tokens.

    Peak memory beyond the inputs is a few [chunk_tokens, V] fp32 buffers plus the
    head's weight gradient [V, H_s]; full [N, V] logits never exist. Softmaxes are in
    fp32 whatever the input dtype; the head matmuls run in the autocast dtype when
    autocast is on, else in the hidden states' dtype. Does not change its inputs.

    Args:
        temperature: T > 0; the KL term is scaled by T² (gradients keep their size).
        top_k: if set, the teacher's distribution is its top-k logits renormalised
            (zero elsewhere) against the student's full-vocabulary softmax.
        lm_weight: weight of the student's LM cross-entropy (at T = 1); needs labels.
        chunk_tokens: tokens per chunk of logits; the peak beyond the weight gradient
            is about 2 · chunk_tokens · V · 4 bytes.
        grad_in_forward: compute the gradients during the forward (four head matmuls
            per token instead of six; the weight gradient then lives from the forward
            to the backward, and a forward without backward wastes that work). Off: the
            backward recomputes each chunk's logits.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        top_k: int | None = None,
        lm_weight: float = 0.0,
        chunk_tokens: int = 256,
        grad_in_forward: bool = False,
    ):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if lm_weight < 0:
            raise ValueError(f"lm_weight must be >= 0, got {lm_weight}")
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        self.temperature = float(temperature)
        self.top_k = top_k
        self.lm_weight = float(lm_weight)
        self.chunk_tokens = int(chunk_tokens)
        self.grad_in_forward = bool(grad_in_forward)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, top_k={self.top_k}, "
            f"lm_weight={self.lm_weight}, chunk_tokens={self.chunk_tokens}, "
            f"grad_in_forward={self.grad_in_forward}"
        )

    def forward(
        self,
        student_hidden: Tensor,
        student_head: nn.Module,
        teacher_hidden: Tensor,
        teacher_head: nn.Module,
        labels: Tensor | None = None,
    ) -> KDLossOutput:
        """The loss of N tokens.

        Args:
            student_hidden: [N, H_s] after the student's final norm.
            student_head: linear head with `weight` [V, H_s] and optional `bias` [V].
            teacher_hidden: [N, H_t]; gets no gradient.
            teacher_head: linear head with `weight` [V, H_t]; gets no gradient.
            labels: [N] next-token ids, -100 = ignore; the means are over the others.
        """
        hs, ht = student_hidden, teacher_hidden.detach()
        wt, bt = _head_params(teacher_head, detach=True)
        ws, bs = _head_params(student_head, detach=False)
        _check_shapes(hs, ws, ht, wt, self.top_k)
        if labels is None:
            if self.lm_weight:
                raise ValueError("lm_weight > 0 needs labels")
        else:
            labels = labels.reshape(-1)
            if labels.shape[0] != hs.shape[0]:
                raise ValueError(f"labels {tuple(labels.shape)} for {hs.shape[0]} tokens")
            keep = labels != IGNORE_INDEX
            if not bool(keep.all()):
                hs, ht, labels = hs[keep], ht[keep], labels[keep]
        count = hs.shape[0]
        if count == 0:
            zero = hs.sum() * 0.0
            ce = None if labels is None else zero.detach().float()
            return KDLossOutput(zero, zero.detach().float(), ce, 0)
        opts = KDOptions(
            self.temperature,
            self.top_k,
            self.lm_weight,
            self.chunk_tokens,
            _compute_dtype(hs),
            _compute_dtype(ht),
            self.grad_in_forward and torch.is_grad_enabled(),
        )
        loss, kl, ce = ChunkedKDFunction.apply(hs, ws, bs, ht, wt, bt, labels, opts)
        return KDLossOutput(loss, kl.detach(), None if labels is None else ce.detach(), count)


def _head_params(head: nn.Module, detach: bool) -> tuple[Tensor, Tensor | None]:
    weight, bias = head.weight, getattr(head, "bias", None)
    if detach:
        return weight.detach(), None if bias is None else bias.detach()
    return weight, bias


def _check_shapes(hs: Tensor, ws: Tensor, ht: Tensor, wt: Tensor, top_k: int | None) -> None:
    if hs.dim() != 2 or ht.dim() != 2 or hs.shape[0] != ht.shape[0]:
        raise ValueError(f"hidden states must be [N, H]: {tuple(hs.shape)}, {tuple(ht.shape)}")
    if ws.shape != (ws.shape[0], hs.shape[1]) or wt.shape != (wt.shape[0], ht.shape[1]):
        raise ValueError(f"head weights {tuple(ws.shape)}, {tuple(wt.shape)} do not fit")
    if ws.shape[0] != wt.shape[0]:
        raise ValueError(f"student vocab {ws.shape[0]} != teacher vocab {wt.shape[0]}")
    if top_k is not None and top_k > ws.shape[0]:
        raise ValueError(f"top_k {top_k} > vocab {ws.shape[0]}")


def plain_kd_loss(
    student_hidden: Tensor,
    student_head: nn.Module,
    teacher_hidden: Tensor,
    teacher_head: nn.Module,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    lm_weight: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """`ChunkedKDLoss`'s definition on full [N, V] logits: (loss, mean KL, mean CE).

    The plain formula, for tests and benchmarks: holds several [N, V] fp32 tensors.
    """
    dtype = softmax_dtype(student_hidden.dtype)
    zs = student_head(student_hidden).to(dtype)  # [N, V]
    with torch.no_grad():
        zt = teacher_head(teacher_hidden).to(dtype)  # [N, V]
    keep = torch.ones(zs.shape[0], dtype=torch.bool, device=zs.device)
    if labels is not None:
        keep = labels.reshape(-1) != IGNORE_INDEX
    count = keep.sum().clamp(min=1)
    log_ps = F.log_softmax(zs / temperature if temperature != 1.0 else zs, dim=-1)
    if temperature != 1.0:
        zt = zt / temperature
    if top_k is None:
        log_pt = F.log_softmax(zt, dim=-1)
        kl_tok = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)  # [N]
    else:
        values, index = zt.topk(top_k, dim=-1)  # [N, k]
        log_pt = F.log_softmax(values, dim=-1)
        kl_tok = (log_pt.exp() * (log_pt - log_ps.gather(-1, index))).sum(-1)
    kl = (kl_tok * keep).sum() / count
    loss = temperature**2 * kl
    ce = None
    if labels is not None:
        ce = F.cross_entropy(zs, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        ce = ce / count
        if lm_weight:
            loss = loss + lm_weight * ce
    return loss, kl.detach(), None if ce is None else ce.detach()

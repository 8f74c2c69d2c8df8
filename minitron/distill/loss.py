"""Forward KL(teacher ‖ student) on logits, computed chunk by chunk over tokens.

`ChunkedKDLoss` never holds full [N, V] logits: it takes the final hidden states and
the LM heads, computes one chunk of logits at a time in the forward, and recomputes
each chunk in the backward, accumulating the gradients of the student's hidden states
and head weight chunk by chunk (a custom autograd Function). `plain_kd_loss` is the
same definition written the plain way, on full logits, for tests and benchmarks.

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


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Logits [c, V] of hidden [c, H] through a linear head, the matmul in `dtype`.

    The result is fp32 (fp64 if `dtype` is fp64), whatever `dtype` is.
    """
    bias = None if bias is None else bias.to(dtype)
    return F.linear(hidden.to(dtype), weight.to(dtype), bias).to(_softmax_dtype(dtype))


def _softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _log_softmax_(z: Tensor) -> Tensor:
    """log_softmax over the last dim, in place."""
    return z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))


def _softmax_(z: Tensor) -> Tensor:
    """softmax over the last dim, in place."""
    z.sub_(z.amax(dim=-1, keepdim=True)).exp_()
    return z.div_(z.sum(dim=-1, keepdim=True))


def _chunk_sums(
    zs: Tensor, zt: Tensor, labels: Tensor | None, temperature: float, top_k: int | None
) -> tuple[Tensor, Tensor]:
    """Summed KL(teacher ‖ student) at T and summed student CE of one chunk.

    Overwrites zs and zt (fp32 logits [c, V]) to save memory.
    """
    ce = zs.new_zeros(())
    if labels is not None and temperature != 1.0:
        ce = (torch.logsumexp(zs, dim=-1) - zs.gather(1, labels[:, None]).squeeze(1)).sum()
    ls = _log_softmax_(zs.div_(temperature))  # log p_s [c, V]
    if labels is not None and temperature == 1.0:
        ce = -ls.gather(1, labels[:, None]).sum()
    zt.div_(temperature)
    if top_k is None:
        lt = _log_softmax_(zt)  # log p_t [c, V]
        pt = lt.exp()
        kl = pt.mul_(lt.sub_(ls)).sum()
    else:
        values, index = zt.topk(top_k, dim=-1)  # [c, k]
        lt = torch.log_softmax(values, dim=-1)
        kl = (lt.exp() * (lt - ls.gather(1, index))).sum()
    return kl, ce


def _chunk_grad(
    zs: Tensor,
    zt: Tensor,
    labels: Tensor | None,
    temperature: float,
    top_k: int | None,
    kl_scale: Tensor,
    ce_scale: Tensor | None,
) -> Tensor:
    """d loss / d student logits [c, V] fp32 of one chunk; overwrites zs and zt.

    kl_scale multiplies Σ KL (d/dz_s = (p_s - p_t) / T); ce_scale multiplies Σ CE
    (d/dz_s = softmax(z_s) - onehot(label)).
    """
    a = kl_scale / temperature
    p1 = None
    if ce_scale is not None and temperature != 1.0:
        p1 = torch.softmax(zs, dim=-1).mul_(ce_scale)  # [c, V]
    grad = _softmax_(zs.div_(temperature))  # p_s [c, V]
    if ce_scale is not None and temperature == 1.0:
        grad.mul_(a + ce_scale)  # p_s is also the CE's softmax
    else:
        grad.mul_(a)
    if p1 is not None:
        grad.add_(p1)
        del p1
    zt.div_(temperature)
    if top_k is None:
        grad.sub_(_softmax_(zt).mul_(a))
    else:
        values, index = zt.topk(top_k, dim=-1)  # [c, k]
        grad.scatter_add_(1, index, torch.softmax(values, dim=-1).mul_(-a))
    if ce_scale is not None:
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad.index_put_((rows, labels), -ce_scale.expand(rows.shape), accumulate=True)
    return grad


@dataclass(frozen=True)
class _Options:
    temperature: float
    top_k: int | None
    lm_weight: float
    chunk_tokens: int
    student_dtype: torch.dtype
    teacher_dtype: torch.dtype


class _ChunkedKDFunction(torch.autograd.Function):
    """Loss, mean KL and mean CE from hidden states; backward recomputes each chunk."""

    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, labels, opts: _Options):
        # hs [D, H_s], ws [V, H_s], bs [V] | None, ht [D, H_t], wt [V, H_t], labels [D] | None
        count, temp = hs.shape[0], opts.temperature
        with torch.autocast(hs.device.type, enabled=False):
            hs_c, ws_c = hs.to(opts.student_dtype), ws.to(opts.student_dtype)
            ht_c, wt_c = ht.to(opts.teacher_dtype), wt.to(opts.teacher_dtype)
            kl_sum = ce_sum = hs.new_zeros((), dtype=torch.float32)
            for start in range(0, count, opts.chunk_tokens):
                rows = slice(start, start + opts.chunk_tokens)
                zs = _logits(hs_c[rows], ws_c, bs, opts.student_dtype)  # [c, V] fp32
                zt = _logits(ht_c[rows], wt_c, bt, opts.teacher_dtype)  # [c, V] fp32
                y = None if labels is None else labels[rows]
                kl, ce = _chunk_sums(zs, zt, y, temp, opts.top_k)
                del zs, zt
                kl_sum, ce_sum = kl_sum + kl, ce_sum + ce
        loss = kl_sum * (temp * temp / count)
        if opts.lm_weight:
            loss = loss + ce_sum * (opts.lm_weight / count)
        kl_mean, ce_mean = kl_sum / count, ce_sum / count
        ctx.save_for_backward(hs, ws, bs, ht, wt, bt, labels)
        ctx.opts = opts
        ctx.mark_non_differentiable(kl_mean, ce_mean)
        return loss, kl_mean, ce_mean

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl, _grad_ce):
        hs, ws, bs, ht, wt, bt, labels = ctx.saved_tensors
        opts: _Options = ctx.opts
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        count, temp, sdt = hs.shape[0], opts.temperature, opts.student_dtype
        kl_scale = grad_loss * (temp * temp / count)
        ce_scale = grad_loss * (opts.lm_weight / count) if opts.lm_weight else None
        grad_h = torch.empty_like(hs) if need_h else None
        grad_w = torch.zeros(ws.shape, dtype=sdt, device=ws.device) if need_w else None
        grad_b = torch.zeros_like(bs, dtype=_softmax_dtype(bs.dtype)) if need_b else None
        with torch.autocast(hs.device.type, enabled=False):
            hs_c, ws_c = hs.to(sdt), ws.to(sdt)
            ht_c, wt_c = ht.to(opts.teacher_dtype), wt.to(opts.teacher_dtype)
            for start in range(0, count, opts.chunk_tokens):
                rows = slice(start, start + opts.chunk_tokens)
                zs = _logits(hs_c[rows], ws_c, bs, sdt)  # recomputed [c, V] fp32
                zt = _logits(ht_c[rows], wt_c, bt, opts.teacher_dtype)
                y = None if labels is None else labels[rows]
                grad = _chunk_grad(zs, zt, y, temp, opts.top_k, kl_scale, ce_scale)
                del zs, zt
                if need_b:
                    grad_b += grad.sum(dim=0)
                grad = grad.to(sdt)  # [c, V]
                if need_h:
                    grad_h[rows] = grad @ ws_c  # [c, H_s]
                if need_w:
                    grad_w.addmm_(grad.T, hs_c[rows])  # [V, H_s]
                del grad
        grad_w = None if grad_w is None else grad_w.to(ws.dtype)
        grad_b = None if grad_b is None else grad_b.to(bs.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


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
        chunk_tokens: tokens per chunk of logits.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        top_k: int | None = None,
        lm_weight: float = 0.0,
        chunk_tokens: int = 1024,
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

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, top_k={self.top_k}, "
            f"lm_weight={self.lm_weight}, chunk_tokens={self.chunk_tokens}"
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
        opts = _Options(
            self.temperature,
            self.top_k,
            self.lm_weight,
            self.chunk_tokens,
            _compute_dtype(hs),
            _compute_dtype(ht),
        )
        loss, kl, ce = _ChunkedKDFunction.apply(hs, ws, bs, ht, wt, bt, labels, opts)
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
    dtype = _softmax_dtype(student_hidden.dtype)
    zs = student_head(student_hidden).to(dtype)  # [N, V]
    with torch.no_grad():
        zt = teacher_head(teacher_hidden).to(dtype)  # [N, V]
    keep = torch.ones(zs.shape[0], dtype=torch.bool, device=zs.device)
    if labels is not None:
        keep = labels.reshape(-1) != IGNORE_INDEX
    count = keep.sum().clamp(min=1)
    log_ps = F.log_softmax(zs / temperature, dim=-1)
    if top_k is None:
        log_pt = F.log_softmax(zt / temperature, dim=-1)
        kl_tok = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)  # [N]
    else:
        values, index = zt.topk(top_k, dim=-1)  # [N, k]
        log_pt = F.log_softmax(values / temperature, dim=-1)
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

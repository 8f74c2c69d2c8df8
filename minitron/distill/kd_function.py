"""The autograd Function behind `ChunkedKDLoss`: KD loss and gradients chunk by chunk.

Logits of `chunk_tokens` rows come from one matmul per model; the softmax math on them
runs over blocks of rows (~8M elements) so that its temporaries stay small; each
chunk's gradient with respect to the student logits is written over the student's
logits and turned into the hidden-state and head-weight gradients right away (in
place: `addmm_`). Two schedules, equal in value and gradient:

- recompute (default): the forward keeps only sums; the backward recomputes each
  chunk's logits of both models. Six head matmuls per token (plain: four).
- grad in forward: the forward also computes the gradients for a unit output gradient
  and keeps them until the backward scales them. Four head matmuls, like the plain
  formula; the head's weight gradient [V, H_s] exists from the forward on, and the
  work is wasted if no backward follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_ELEMENTS = 1 << 23  # softmax temporaries: ~32 MB of fp32 per block of rows


@dataclass(frozen=True)
class KDOptions:
    """Static settings of one call (not tensors)."""

    temperature: float
    top_k: int | None
    lm_weight: float
    chunk_tokens: int
    student_dtype: torch.dtype  # matmul dtype of the student head
    teacher_dtype: torch.dtype
    grad_in_forward: bool


def softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs: softmaxes never run in half precision."""
    return torch.promote_types(dtype, torch.float32)


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Logits [c, V] (fp32 or fp64) of hidden [c, H] through a linear head, matmul in dtype."""
    bias = None if bias is None else bias.to(dtype)
    return F.linear(hidden.to(dtype), weight.to(dtype), bias).to(softmax_dtype(dtype))


def _log_softmax_(z: Tensor) -> Tensor:
    """log_softmax over the last dim, in place."""
    return z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))


def _block(zs, zt, labels, temperature, top_k, scales):
    """KL sum and CE sum of a few rows; with scales, zs becomes d loss / d zs.

    zs, zt: [b, V] student / teacher logits, both overwritten (in place, so that the
    temporaries stay at one or two blocks); labels [b] | None; scales: (kl_scale,
    ce_scale | None) multiplying Σ KL and Σ CE in the loss, or None.
    """
    t = temperature
    ce_scale = None if scales is None else scales[1]
    ce, p1 = zs.new_zeros(()), None
    if labels is not None:
        lse1 = torch.logsumexp(zs, dim=-1, keepdim=True)  # [b, 1]
        ce = (lse1 - zs.gather(1, labels[:, None])).sum()
        if ce_scale is not None and t != 1.0:
            p1 = zs.sub(lse1).exp_().mul_(ce_scale)  # softmax at T = 1, scaled
    log_ps = _log_softmax_(zs if t == 1.0 else zs.div_(t))  # [b, V]
    if top_k is None:
        log_pt = _log_softmax_(zt if t == 1.0 else zt.div_(t))  # [b, V]
        p_t = log_pt.exp()
        kl = log_pt.sub_(log_ps).mul_(p_t).sum()
    else:
        values, index = zt.topk(top_k, dim=-1)  # [b, k]
        log_pt = torch.log_softmax(values if t == 1.0 else values / t, dim=-1)
        p_t = log_pt.exp()
        kl = (p_t * (log_pt - log_ps.gather(1, index))).sum()
    if scales is None:
        return kl, ce
    a = scales[0] / t  # d(Σ KL)/d zs = (p_s - p_t) / T
    grad = log_ps.exp_()  # p_s, in zs
    if ce_scale is not None and t == 1.0:  # d(Σ CE)/d zs = softmax(zs) - onehot(label)
        grad.mul_(a + ce_scale)
    else:
        grad.mul_(a)
    if p1 is not None:
        grad.add_(p1)
    if top_k is None:
        grad.sub_(p_t.mul_(a))
    else:
        grad.scatter_add_(1, index, p_t.mul_(-a))
    if ce_scale is not None:
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad.index_put_((rows, labels), -ce_scale.expand(rows.shape), accumulate=True)
    return kl, ce


def _chunk(zs, zt, labels, opts: KDOptions, scales) -> tuple[Tensor, Tensor]:
    """KL and CE sums of one chunk; with scales, zs [c, V] becomes d loss / d zs."""
    kl = ce = zs.new_zeros(())
    step = max(1, BLOCK_ELEMENTS // zs.shape[1])
    for start in range(0, zs.shape[0], step):
        rows = slice(start, start + step)
        y = None if labels is None else labels[rows]
        k, c = _block(zs[rows], zt[rows], y, opts.temperature, opts.top_k, scales)
        kl, ce = kl + k, ce + c
    return kl, ce


class _Grads:
    """Gradient accumulators for the student's hidden states, head weight and bias."""

    def __init__(self, hs, ws, bs, needs, dtype):
        need_h, need_w, need_b = needs
        self.h = torch.zeros_like(hs) if need_h else None
        self.w = torch.zeros(ws.shape, dtype=dtype, device=ws.device) if need_w else None
        self.b = torch.zeros_like(bs, dtype=softmax_dtype(bs.dtype)) if need_b else None
        self.dtypes = (hs.dtype, ws.dtype, None if bs is None else bs.dtype)

    def add(self, grad: Tensor, rows: slice, hs_c: Tensor, ws_c: Tensor) -> None:
        """Adds one chunk: grad = d loss / d logits [c, V], hs_c [N, H], ws_c [V, H]."""
        if self.b is not None:
            self.b += grad.sum(dim=0)
        grad = grad.to(ws_c.dtype)
        if self.h is not None:
            self.h[rows] = grad @ ws_c  # [c, H]
        if self.w is not None:
            self.w.addmm_(grad.T, hs_c[rows])  # [V, H]

    def result(self, grad_out: Tensor | None):
        """(hidden, weight, bias) gradients in their inputs' dtypes, times grad_out."""
        out, accumulated = [], (self.h, self.w, self.b)
        self.h = self.w = self.b = None  # no reference left: autograd can adopt them
        for g, dtype in zip(accumulated, self.dtypes, strict=True):
            if g is not None and grad_out is not None:
                g = g.mul_(grad_out.to(g.dtype))
            out.append(None if g is None else g.to(dtype))
        return out


def _run(tensors, labels, opts: KDOptions, scales, grads: _Grads | None):
    """One pass over all chunks: (KL sum, CE sum), adding gradients to grads if given."""
    hs, ws, bs, ht, wt, bt = tensors
    with torch.autocast(hs.device.type, enabled=False):
        hs_c, ws_c = hs.to(opts.student_dtype), ws.to(opts.student_dtype)
        ht_c, wt_c = ht.to(opts.teacher_dtype), wt.to(opts.teacher_dtype)
        kl = ce = hs.new_zeros((), dtype=softmax_dtype(hs.dtype))
        for start in range(0, hs.shape[0], opts.chunk_tokens):
            rows = slice(start, start + opts.chunk_tokens)
            zs = _logits(hs_c[rows], ws_c, bs, opts.student_dtype)  # [c, V]
            zt = _logits(ht_c[rows], wt_c, bt, opts.teacher_dtype)  # [c, V]
            y = None if labels is None else labels[rows]
            k, c = _chunk(zs, zt, y, opts, scales)
            del zt
            kl, ce = kl + k, ce + c
            if grads is not None:
                grads.add(zs, rows, hs_c, ws_c)
            del zs
    return kl, ce


def _scales(grad_out: Tensor, count: int, opts: KDOptions):
    t2 = opts.temperature**2
    return grad_out * (t2 / count), grad_out * (opts.lm_weight / count) if opts.lm_weight else None


class ChunkedKDFunction(torch.autograd.Function):
    """(loss, mean KL, mean CE) from hidden states and heads; see the module docstring.

    Inputs: hs [D, H_s], ws [V, H_s], bs [V] | None, ht [D, H_t], wt [V, H_t],
    bt [V] | None, labels [D] | None (all valid), opts. Only hs, ws, bs get gradients.
    """

    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, labels, opts: KDOptions):
        count, tensors = hs.shape[0], (hs, ws, bs, ht, wt, bt)
        fused = opts.grad_in_forward and any(ctx.needs_input_grad[:3])
        grads, scales = None, None
        if fused:
            grads = _Grads(hs, ws, bs, ctx.needs_input_grad[:3], opts.student_dtype)
            scales = _scales(hs.new_ones((), dtype=softmax_dtype(hs.dtype)), count, opts)
        kl, ce = _run(tensors, labels, opts, scales, grads)
        loss = kl * (opts.temperature**2 / count)
        if opts.lm_weight:
            loss = loss + ce * (opts.lm_weight / count)
        ctx.opts, ctx.grads, ctx.grads_used = opts, grads, False
        if not fused:
            ctx.save_for_backward(*tensors, labels)
        kl_mean, ce_mean = kl / count, ce / count
        ctx.mark_non_differentiable(kl_mean, ce_mean)
        return loss, kl_mean, ce_mean

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl, _grad_ce):
        grads: _Grads | None = ctx.grads
        if grads is not None:  # computed in the forward for a unit output gradient
            if ctx.grads_used:
                raise RuntimeError("grad_in_forward allows one backward per forward")
            ctx.grads_used = True  # result() scales the gradients in place
            return *grads.result(grad_loss), None, None, None, None, None
        hs, ws, bs, ht, wt, bt, labels = ctx.saved_tensors
        opts: KDOptions = ctx.opts
        grads = _Grads(hs, ws, bs, ctx.needs_input_grad[:3], opts.student_dtype)
        scales = _scales(grad_loss, hs.shape[0], opts)
        _run((hs, ws, bs, ht, wt, bt), labels, opts, scales, grads)
        return *grads.result(None), None, None, None, None, None

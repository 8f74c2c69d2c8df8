"""ChunkedKDLoss against the plain formula: value and gradient, tiny vocab and hidden."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from minitron.distill import kd_function
from minitron.distill.loss import ChunkedKDLoss, plain_kd_loss
from tests.conftest import random_batches, tiny_llama

N, H_S, H_T, V = 37, 16, 24, 50


def explicit_reference(hs, s_head, ht, t_head, labels, temperature, top_k, lm_weight):
    """The loss written out with explicit sums over the vocabulary (float64)."""
    zs = (hs.double() @ s_head.weight.double().T + s_head.bias.double()) / temperature
    zt = (ht.double() @ t_head.weight.double().T + t_head.bias.double()) / temperature
    log_ps = zs - zs.exp().sum(-1, keepdim=True).log()
    if top_k is not None:
        zt, index = zt.topk(top_k, dim=-1)
        log_ps = log_ps.gather(-1, index)
    log_pt = zt - zt.exp().sum(-1, keepdim=True).log()
    kl_tok = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # [N]
    keep = torch.ones(len(hs), dtype=torch.bool) if labels is None else labels != -100
    kl = kl_tok[keep].sum() / keep.sum()
    loss = temperature**2 * kl
    if labels is not None:
        z1 = zs * temperature
        log_p1 = z1 - z1.exp().sum(-1, keepdim=True).log()
        ce = -log_p1[keep].gather(-1, labels[keep][:, None]).sum() / keep.sum()
        loss = loss + lm_weight * ce
    return loss, kl


def make_inputs(seed=0, dtype=torch.float32, bias=True):
    gen = torch.Generator().manual_seed(seed)
    hs = torch.randn(N, H_S, generator=gen, dtype=dtype).requires_grad_()
    ht = torch.randn(N, H_T, generator=gen, dtype=dtype)
    s_head = nn.Linear(H_S, V, bias=bias, dtype=dtype)
    t_head = nn.Linear(H_T, V, dtype=dtype)
    with torch.no_grad():
        for p in (*s_head.parameters(), *t_head.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * 0.5)
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[::4] = -100
    return hs, s_head, ht, t_head, labels


def grads(loss, hs, head):
    return torch.autograd.grad(loss, [hs, *head.parameters()])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("top_k", [None, 5])
@pytest.mark.parametrize("lm_weight", [0.0, 0.5])
@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_matches_plain_formula_value_and_gradient(temperature, top_k, lm_weight, grad_in_forward):
    hs, s_head, ht, t_head, labels = make_inputs()
    loss_fn = ChunkedKDLoss(temperature, top_k, lm_weight, 8, grad_in_forward)  # 8 ∤ 37
    out = loss_fn(hs, s_head, ht, t_head, labels)
    args = (labels, temperature, top_k, lm_weight)
    want, want_kl = explicit_reference(hs, s_head, ht, t_head, *args)
    plain, plain_kl, plain_ce = plain_kd_loss(hs, s_head, ht, t_head, *args)
    print(f"T={temperature} k={top_k} lm={lm_weight}: loss {out.loss.item():.6f} kl {out.kl:.6f}")
    assert out.tokens == int((labels != -100).sum()) == 27
    assert out.loss.item() == pytest.approx(want.item(), abs=1e-5)
    assert out.kl.item() == pytest.approx(want_kl.item(), abs=1e-5)
    assert out.loss.item() == pytest.approx(plain.item(), abs=1e-5)
    assert out.ce.item() == pytest.approx(plain_ce.item(), abs=1e-5)
    assert out.kl.item() > 0.1  # the inputs differ: a loss of 0 would pass nothing
    for got, ref in zip(grads(out.loss, hs, s_head), grads(want, hs, s_head), strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref.float(), atol=1e-5, rtol=0)
        assert ref.abs().max() > 1e-3


def test_no_labels_averages_over_all_tokens_and_has_no_ce():
    hs, s_head, ht, t_head, _ = make_inputs(seed=1, bias=True)
    out = ChunkedKDLoss(temperature=1.5, chunk_tokens=5)(hs, s_head, ht, t_head)
    want, want_kl = explicit_reference(hs, s_head, ht, t_head, None, 1.5, None, 0.0)
    assert out.tokens == N and out.ce is None
    assert out.loss.item() == pytest.approx(want.item(), abs=1e-5)
    for got, ref in zip(grads(out.loss, hs, s_head), grads(want, hs, s_head), strict=True):
        torch.testing.assert_close(got, ref.float(), atol=1e-5, rtol=0)


def test_gradcheck_float64_no_bias():
    hs, s_head, ht, t_head, labels = make_inputs(seed=2, dtype=torch.float64, bias=False)
    hs = hs[:11].detach().requires_grad_()
    ht, labels = ht[:11], labels[:11]
    loss_fn = ChunkedKDLoss(temperature=2.0, top_k=7, lm_weight=0.3, chunk_tokens=4)

    def f(h, w):
        return loss_fn(h, SimpleNamespace(weight=w), ht, t_head, labels).loss

    w = s_head.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (hs, w), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_zero_when_student_equals_teacher(temperature):
    hs, s_head, _, _, labels = make_inputs(seed=3)
    out = ChunkedKDLoss(temperature, chunk_tokens=6)(hs, s_head, hs.detach(), s_head, labels)
    assert abs(out.loss.item()) <= 1e-7 and abs(out.kl.item()) <= 1e-7
    for g in grads(out.loss, hs, s_head):
        assert g.abs().max() <= 1e-7


def test_top_k_equal_models_gives_minus_log_top_k_mass():
    hs, s_head, _, _, _ = make_inputs(seed=4)
    out = ChunkedKDLoss(top_k=5, chunk_tokens=16)(hs, s_head, hs.detach(), s_head)
    probs = torch.softmax(s_head(hs).double(), dim=-1)
    want = -probs.topk(5, dim=-1).values.sum(-1).log().mean()
    assert out.kl.item() == pytest.approx(want.item(), abs=1e-6)


def test_chunk_and_block_sizes_and_schedule_do_not_change_the_result(monkeypatch):
    hs, s_head, ht, t_head, labels = make_inputs(seed=5)
    results = []
    for chunk, block_rows, fused in ((1, 1, False), (7, 3, True), (37, 5, False), (1000, 37, True)):
        monkeypatch.setattr(kd_function, "BLOCK_ELEMENTS", block_rows * V)
        loss_fn = ChunkedKDLoss(2.0, None, 0.2, chunk, grad_in_forward=fused)
        out = loss_fn(hs, s_head, ht, t_head, labels)
        results.append((out.loss.detach(), *grads(out.loss, hs, s_head)))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_bf16_inputs_run_in_fp32_softmax_and_stay_close():
    hs, s_head, ht, t_head, labels = make_inputs(seed=6)
    ref = ChunkedKDLoss(lm_weight=0.5, chunk_tokens=8)(hs, s_head, ht, t_head, labels)
    ref_grads = grads(ref.loss, hs, s_head)
    hs16 = hs.detach().bfloat16().requires_grad_()
    s16, t16 = s_head.to(torch.bfloat16), t_head.to(torch.bfloat16)
    out = ChunkedKDLoss(lm_weight=0.5, chunk_tokens=8)(hs16, s16, ht.bfloat16(), t16, labels)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=0.03)
    for got, want in zip(grads(out.loss, hs16, s16), ref_grads, strict=True):
        assert got.dtype == torch.bfloat16
        assert (got.float() - want).norm() / want.norm() < 0.05


def test_cpu_autocast_bf16_matmuls_fp32_grads():
    hs, s_head, ht, t_head, labels = make_inputs(seed=7)
    ref = ChunkedKDLoss(chunk_tokens=8)(hs, s_head, ht, t_head, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ChunkedKDLoss(chunk_tokens=8)(hs, s_head, ht, t_head, labels)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=0.03)
    assert out.loss.item() != ref.loss.item()  # the matmuls did run in bf16
    got = grads(out.loss, hs, s_head)
    assert [g.dtype for g in got] == [torch.float32] * 3


def test_frozen_head_and_all_ignored_labels():
    hs, s_head, ht, t_head, labels = make_inputs(seed=8)
    s_head.requires_grad_(False)
    out = ChunkedKDLoss(chunk_tokens=8)(hs, s_head, ht, t_head, labels)
    (g,) = torch.autograd.grad(out.loss, [hs])
    assert (g[labels == -100] == 0).all() and g[labels != -100].abs().max() > 0
    empty = ChunkedKDLoss()(hs, s_head, ht, t_head, torch.full((N,), -100))
    assert empty.tokens == 0 and empty.loss.item() == 0.0
    empty.loss.backward()


def test_bad_arguments():
    hs, s_head, ht, t_head, _ = make_inputs()
    with pytest.raises(ValueError, match="temperature"):
        ChunkedKDLoss(temperature=0)
    with pytest.raises(ValueError, match="needs labels"):
        ChunkedKDLoss(lm_weight=1.0)(hs, s_head, ht, t_head)
    with pytest.raises(ValueError, match="vocab"):
        ChunkedKDLoss()(hs, s_head, ht, nn.Linear(H_T, V + 1))
    with pytest.raises(ValueError, match="top_k"):
        ChunkedKDLoss(top_k=V + 1)(hs, s_head, ht, t_head)


def test_grad_in_forward_scales_by_the_output_gradient_once():
    hs, s_head, ht, t_head, labels = make_inputs(seed=9)
    ref = ChunkedKDLoss(top_k=3, lm_weight=1.0, chunk_tokens=8)(hs, s_head, ht, t_head, labels)
    want = grads(3.0 * ref.loss, hs, s_head)
    out = ChunkedKDLoss(top_k=3, lm_weight=1.0, chunk_tokens=8, grad_in_forward=True)(
        hs, s_head, ht, t_head, labels
    )
    got = torch.autograd.grad(3.0 * out.loss, [hs, *s_head.parameters()], retain_graph=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
    with pytest.raises(RuntimeError, match="one backward"):
        torch.autograd.grad(out.loss, [hs])
    with torch.no_grad():
        quiet = ChunkedKDLoss(top_k=3, lm_weight=1.0, chunk_tokens=8, grad_in_forward=True)(
            hs, s_head, ht, t_head, labels
        )
    assert quiet.loss.item() == pytest.approx(ref.loss.item(), abs=1e-6)


def test_tiny_llamas_hidden_states_give_the_loss_of_their_logits():
    """The docs' recipe: hidden states after the final norm + lm_head = model logits."""
    student, teacher = tiny_llama(num_layers=2, seed=1).train(), tiny_llama(num_layers=4, seed=2)
    ids = random_batches(count=1, batch=2, seq_len=12)[0]
    hs = student.model(ids).last_hidden_state[:, :-1].flatten(0, 1)  # [N, H]
    with torch.no_grad():
        ht = teacher.model(ids).last_hidden_state[:, :-1].flatten(0, 1)
        zt = teacher(ids).logits[:, :-1].flatten(0, 1)  # [N, V]
    labels = ids[:, 1:].flatten()
    out = ChunkedKDLoss(lm_weight=0.5, chunk_tokens=5)(
        hs, student.lm_head, ht, teacher.lm_head, labels
    )
    zs = student(ids).logits[:, :-1].flatten(0, 1)
    log_ps, log_pt = zs.log_softmax(-1), zt.log_softmax(-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
    want = kl + 0.5 * torch.nn.functional.cross_entropy(zs, labels)
    assert out.loss.item() == pytest.approx(want.item(), abs=1e-5)
    out.loss.backward()
    got = student.lm_head.weight.grad.clone()
    student.zero_grad()
    want.backward()
    torch.testing.assert_close(got, student.lm_head.weight.grad, atol=1e-5, rtol=0)

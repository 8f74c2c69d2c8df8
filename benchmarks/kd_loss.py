"""Peak memory and time of the chunked KD loss against the plain full-logits formula.

Forward + backward of forward KL(teacher ‖ student) at vocab 128,256, hidden 4096,
B×T = 2×2048 tokens on CPU, fp32 heads, random hidden states. Each variant runs in a
fresh child process; its peak is the growth of the process's peak resident set
(VmHWM, reset just before the step) over its resident set once the inputs exist, so
the heads' weights and hidden states count for neither and the weight gradient counts
for both. The children save the loss and gradients (every 64th weight row) to
safetensors files and the parent compares them. Prints one JSON object.

    .venv/bin/python benchmarks/kd_loss.py [--tokens 4096] [--chunk-tokens 256]
        [--variants plain,chunked,fused,checkpoint]

`chunked` is ChunkedKDLoss as configured by default (the backward recomputes each
chunk's logits); `fused` is ChunkedKDLoss(grad_in_forward=True); `checkpoint` is the
other design: the plain formula per chunk of tokens under torch.utils.checkpoint
(autograd recomputes the logits in the backward).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from minitron.distill.loss import ChunkedKDLoss, plain_kd_loss

ROW_STRIDE = 64  # weight-gradient rows kept for the comparison


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    """Reset VmHWM (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_inputs(args):
    gen = torch.Generator().manual_seed(0)
    student, teacher = (
        nn.Linear(args.hidden, args.vocab, bias=False),
        nn.Linear(args.hidden, args.vocab, bias=False),
    )
    with torch.no_grad():
        for head in (student, teacher):
            head.weight.normal_(0.0, args.hidden**-0.5, generator=gen)
    teacher.requires_grad_(False)
    hs = torch.randn(args.tokens, args.hidden, generator=gen).requires_grad_()
    ht = torch.randn(args.tokens, args.hidden, generator=gen)
    return hs, student, ht, teacher


def checkpoint_loss(hs, student, ht, teacher, chunk_tokens):
    """The plain formula per chunk, each chunk under torch.utils.checkpoint."""

    def chunk_kl(h, t):
        log_ps = F.log_softmax(student(h).float(), dim=-1)
        with torch.no_grad():
            log_pt = F.log_softmax(teacher(t).float(), dim=-1)
        return F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)

    total = hs.new_zeros(())
    for start in range(0, hs.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        total = total + checkpoint(chunk_kl, hs[rows], ht[rows], use_reentrant=False)
    return total / hs.shape[0]


def child(args) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    hs, student, ht, teacher = make_inputs(args)
    reset = reset_peak()
    before = rss_bytes()
    start = time.perf_counter()
    if args.child == "plain":
        loss = plain_kd_loss(hs, student, ht, teacher)[0]
    elif args.child in ("chunked", "fused"):
        fused = args.child == "fused"
        loss_fn = ChunkedKDLoss(chunk_tokens=args.chunk_tokens, grad_in_forward=fused)
        loss = loss_fn(hs, student, ht, teacher).loss
    else:
        loss = checkpoint_loss(hs, student, ht, teacher, args.chunk_tokens)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = peak_bytes(reset) - before
    tensors = {
        "loss": loss.detach().reshape(1),
        "grad_hidden": hs.grad,
        "grad_weight_rows": student.weight.grad[::ROW_STRIDE].contiguous(),
    }
    save_file(tensors, args.out)
    print(json.dumps({"peak_bytes": peak, "seconds": seconds, "vmhwm": reset}))


def run_child(variant: str, args, out: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--out", out]
    for key in ("vocab", "hidden", "tokens", "chunk_tokens", "threads"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=2 * 2048, help="B×T")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--variants", default="plain,chunked")
    parser.add_argument("--child", choices=["plain", "chunked", "fused", "checkpoint"])
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    variants = args.variants.split(",")
    result = {k: getattr(args, k) for k in ("vocab", "hidden", "tokens", "chunk_tokens")}
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {}
        for name in variants:
            outputs[name] = os.path.join(tmp, f"{name}.safetensors")
            measured = run_child(name, args, outputs[name])
            result[f"{name}_peak_bytes"] = measured["peak_bytes"]
            result[f"{name}_s"] = round(measured["seconds"], 2)
            result["peak_from_vmhwm"] = measured["vmhwm"]
        ref = load_file(outputs[variants[0]])
        for name in variants[1:]:
            got = load_file(outputs[name])
            diff = max((got[k] - ref[k]).abs().max().item() for k in ref)
            key = "max_abs_diff" if name == "chunked" else f"{name}_max_abs_diff"
            result[key] = diff
            result[f"{name}_peak_ratio"] = round(
                result[f"{variants[0]}_peak_bytes"] / result[f"{name}_peak_bytes"], 2
            )
        result["loss"] = ref["loss"].item()
    result["logits_bytes_each"] = args.tokens * args.vocab * 4
    print(json.dumps(result))


if __name__ == "__main__":
    main()

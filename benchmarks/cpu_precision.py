"""Is bf16 native on this CPU, and what does `precision: auto` win? One run, one JSON line.

Three measurements, all in this run on this machine:

1. `detected`: what `minitron.hardware.cpu_bf16_native` says (and why).
2. `matmul`: a 1024x576 @ 576x1536 matmul in fp32, in bf16 and under bf16 autocast,
   median of repeats, here and in a child process with `ONEDNN_MAX_CPU_ISA=AVX2
   ATEN_CPU_CAPABILITY=avx2` (how a CPU with native bf16 behaves as an AVX2-only one;
   check that its bf16 ratio rises before trusting a "capped" measurement).
3. `distill` (skip with `--no-distill`): training tokens/s of the demo pair (the
   embedded SmolLM2-135M teacher, its 30 -> 20-layer depth-pruned student) through
   `run_distill` with the demo recipe's settings at `precision` auto, 32 and
   bf16-mixed, a few steps each (the first step is not counted).

    python benchmarks/cpu_precision.py [--steps 4] [--no-distill]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from minitron.hardware import cpu_bf16_native

DEMO = Path(__file__).resolve().parents[1] / "recipes/smollm2-135m/distill.yaml"
CAPS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def matmul_seconds(repeats: int = 20) -> dict[str, float]:
    """Median seconds of the matmul in fp32, bf16 and bf16 autocast, and the ratios."""
    a, b = torch.randn(1024, 576), torch.randn(576, 1536)
    cases = {
        "fp32": lambda: a @ b,
        "bf16": lambda: a16 @ b16,
        "autocast_bf16": lambda: autocast_mm(),
    }
    a16, b16 = a.bfloat16(), b.bfloat16()

    def autocast_mm():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return a @ b

    out = {}
    for name, fn in cases.items():
        fn()  # warm up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[f"{name}_s"] = statistics.median(times)
    out["bf16_over_fp32"] = out["bf16_s"] / out["fp32_s"]
    out["autocast_over_fp32"] = out["autocast_bf16_s"] / out["fp32_s"]
    return out


def capped_matmul() -> dict[str, float]:
    """``matmul_seconds`` in a child process with oneDNN and ATen capped at AVX2."""
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    code += "from cpu_precision import matmul_seconds; print(json.dumps(matmul_seconds()))"
    env = os.environ | CAPS
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def distill_tokens_per_s(steps: int) -> dict[str, dict]:
    """Training tokens/s of the demo pair at each precision (median over steps 2..N)."""
    from minitron.commands.distill import DistillConfig, run_distill
    from minitron.config import load_recipe
    from minitron.io import load_model
    from minitron.prune import drop_layers

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        student = Path(tmp) / "student"
        model, tokenizer = load_model("smollm2-135m", "float32", "cpu")
        drop_layers(model, list(range(9, 19)))  # the demo's pruned block
        model.save_pretrained(student)
        tokenizer.save_pretrained(student)
        for precision in ("auto", "32", "bf16-mixed"):
            sets = [f"student={student}", f"max_steps={steps}", f"val_every={steps}",
                    f"checkpoint_every={steps}", "data.samples=32", "data.heldout=1",
                    f"precision={precision}"]  # fmt: skip
            config = load_recipe(DEMO, DistillConfig, sets)
            record = run_distill(config, Path(tmp) / f"out-{precision}")
            rates = [row["tokens_per_s"] for row in record["history"][1:]]
            results[precision] = {
                "used": record["precision"],
                "tokens_per_s": statistics.median(rates),
            }
    base = results["32"]["tokens_per_s"]
    for row in results.values():
        row["vs_32"] = row["tokens_per_s"] / base
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--no-distill", action="store_true")
    args = parser.parse_args()
    native, reason = cpu_bf16_native()
    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "detected": {"native_bf16": native, "reason": reason},
        "matmul": matmul_seconds(),
        "matmul_capped_avx2": capped_matmul(),
    }
    if not args.no_distill:
        report["distill"] = distill_tokens_per_s(args.steps)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

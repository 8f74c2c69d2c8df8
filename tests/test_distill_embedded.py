"""Distillation recovers the embedded SmolLM2-135M pruned 30 -> 20 layers (slow)."""

from __future__ import annotations

import pytest

from minitron.commands.distill import DistillConfig, run_distill
from minitron.config import parse_config
from minitron.hardware import cpu_bf16_native
from minitron.io import load_model
from minitron.prune import drop_layers

pytestmark = pytest.mark.slow
# A contiguous block of 10 (0-indexed) that costs little: of the 21 blocks, 9..18 and
# 12..21 give the lowest perplexity on 256 stdlib tokens (313, 314; 18..27 gives 5e7).
# Fixed here so the test spends no time scoring.
DROPPED = list(range(9, 19))


@pytest.fixture(scope="session")
def pruned_smollm(tmp_path_factory):
    """SmolLM2-135M without layers 9..18, saved as an HF folder (fp32)."""
    model, tokenizer = load_model("smollm2-135m", "float32", "cpu")
    drop_layers(model, DROPPED)
    folder = tmp_path_factory.mktemp("smollm2-20l")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_short_distillation_recovers_the_pruned_model(tmp_path, pruned_smollm):
    config = parse_config(
        DistillConfig,
        {
            "teacher": "smollm2-135m",
            "student": str(pruned_smollm),
            "data": {"samples": 64, "heldout": 8, "seq_len": 128, "batch_size": 4},
            "max_steps": 12,
            # auto: bf16-mixed on CPUs with native bf16 (~3x fp32 there), else 32
            # (emulated bf16 is ~8x slower than fp32 on an AVX2-only CPU).
            "precision": "auto",
            "val_every": 12,
            "checkpoint_every": 12,
            "optim": {"lr": 3e-4, "min_lr": 3e-5, "warmup_steps": 2},
        },
    )
    record = run_distill(config, tmp_path / "out")
    assert record["precision"] == ("bf16-mixed" if cpu_bf16_native()[0] else "32")
    start, final, teacher = record["start"], record["final"], record["teacher_val"]
    print(
        f"\nheld-out ({config.data.heldout} x {config.data.seq_len} tokens), "
        f"{record['tokens_seen']} training tokens:\n"
        f"  teacher perplexity {teacher['val_ppl']:.2f}\n"
        f"  pruned  perplexity {start['val_ppl']:.2f}  KL {start['val_kl']:.4f}\n"
        f"  distilled perplexity {final['val_ppl']:.2f}  KL {final['val_kl']:.4f}"
    )
    assert record["layers"] == 20
    assert final["val_kl"] < 0.9 * start["val_kl"]
    assert final["val_ppl"] < 0.9 * start["val_ppl"]
    assert teacher["val_ppl"] < final["val_ppl"]

"""Distillation on CUDA: FSDP on one GPU, bf16, and fp8 with compiled layers.

Skipped without CUDA (CI has none); run by hand on a GPU with ``pytest -m gpu``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from minitron.commands.distill import run_distill
from tests.test_distill import pair, recipe  # noqa: F401  (pair is a fixture)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize(
    "settings",
    [
        {"strategy": "fsdp", "precision": "bf16-mixed"},
        {"strategy": "fsdp", "precision": "bf16-mixed", "activation_checkpointing": True},
        {"precision": "fp8"},  # compile_layers defaults to on here
    ],
    ids=["fsdp-bf16", "fsdp-bf16-checkpointing", "fp8-compiled"],
)
def test_distill_on_cuda(tmp_path, pair, settings):  # noqa: F811
    if settings["precision"] == "fp8":
        pytest.importorskip("torchao")
    teacher, student = pair
    config = recipe(
        teacher, student, accelerator="gpu", devices=1, max_steps=8, val_every=8, **settings
    )
    record = run_distill(config, tmp_path / "out")
    print(settings, "held-out KL", record["start"]["val_kl"], "->", record["final"]["val_kl"])
    assert record["final"]["val_kl"] < record["start"]["val_kl"]
    saved = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    assert type(saved.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert saved.config.num_hidden_layers == 2

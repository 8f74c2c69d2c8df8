"""Writing the distilled student: an HF checkpoint of its own class, plus its record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minitron import __version__
from minitron.distill.precision import plain_linears
from minitron.io import atomic_output_dir, load_config


def saved_dtype(student: nn.Module, spec: str) -> torch.dtype:
    """The student checkpoint's own weight dtype (fp32 master weights are cast back)."""
    dtype = getattr(load_config(spec), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else next(student.parameters()).dtype


def student_weights(student: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """``student`` holding the trained weights of a LightningModule ``state``, in place.

    ``state`` is the full module state dict (keys ``student.*``), as the
    strategy gathered it; under DDP it is the student's own weights already,
    under FSDP the un-sharded copy rank 0 received.
    """
    plain_linears(student)
    weights = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    student.load_state_dict(weights, strict=True)
    return student


def export_student(
    config: Any,
    state: dict[str, torch.Tensor],
    student: nn.Module,
    tokenizer: Any,
    output: Path,
    overwrite: bool,
    dtype: torch.dtype,
    record: dict[str, Any],
) -> dict[str, Any]:
    """Save the student, ``distill.json`` and ``loss_curve.png`` atomically into ``output``.

    Returns:
        ``record`` completed with the parameter and layer counts.
    """
    from minitron.layers import decoder_layers
    from minitron.plots import plot_loss_curve

    model = student_weights(student, state).to(dtype).eval()
    if getattr(model, "supports_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()  # saved configs carry no training switches
    record["params"] = sum(p.numel() for p in model.parameters())
    record["layers"] = len(decoder_layers(model))
    record["dtype"] = str(dtype).removeprefix("torch.")
    record["minitron_version"] = __version__
    with atomic_output_dir(output, overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "distill.json").write_text(json.dumps(record, indent=2) + "\n")
        plot_loss_curve(record["history"], record["val_history"], tmp / "loss_curve.png", record)
    return record

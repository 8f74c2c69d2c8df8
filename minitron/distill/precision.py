"""Precision of the student: Lightning's mixed precision, or torchao float8 training.

``fp8`` swaps the student's ``nn.Linear`` layers for torchao's ``Float8Linear``
(dynamic per-tensor scaling; e4m3 forward, e5m2 gradients), skipping the LM
head and any layer whose dimensions are not multiples of 16 (the fp8 matmul
needs them). Master weights stay in high precision and the layers keep their
weight names, so checkpoints and the exported HF folder are unchanged.
"""

from __future__ import annotations

import logging
from typing import Literal

from torch import nn

from minitron.errors import MinitronError

Precision = Literal["auto", "bf16-mixed", "32", "fp8"]
AS_SET = "as the recipe sets it"  # the reason of any precision but auto


def resolve_precision(
    precision: Precision, on_cuda: bool, bf16_native: tuple[bool, str] | None = None
) -> tuple[str, str]:
    """The precision a run uses for a recipe's ``precision``, and why (one phrase).

    ``auto`` is ``bf16-mixed`` where bf16 is native (CUDA with bf16 tensor cores, a
    CPU with AVX512-BF16 / AMX) and ``32`` elsewhere: emulated bf16 is many times
    slower than fp32. Any other value is used as given.

    Args:
        precision: The recipe's value.
        on_cuda: Whether the run trains on CUDA.
        bf16_native: ``(native, reason)``; default: this machine's, from
            ``minitron.hardware``.
    """
    if precision != "auto":
        return precision, AS_SET
    if bf16_native is None:
        from minitron.hardware import cpu_bf16_native, cuda_bf16_native

        bf16_native = cuda_bf16_native() if on_cuda else cpu_bf16_native()
    native, reason = bf16_native
    return ("bf16-mixed" if native else "32"), f"auto: {reason}"


def trainer_precision(precision: Precision, on_cuda: bool) -> str:
    """Lightning's ``precision`` argument for a run's (resolved) ``precision``.

    ``fp8`` runs the remaining (non-fp8) ops in bf16 autocast on CUDA and in
    fp32 on CPU, where fp8 itself is emulated (the CPU path exists for tests).
    """
    if precision == "auto":
        raise ValueError("resolve precision 'auto' first (resolve_precision)")
    if precision == "32":
        return "32-true"
    if precision == "fp8":
        return "bf16-mixed" if on_cuda else "32-true"
    return "bf16-mixed"


def fp8_eligible(module: nn.Module, fqn: str) -> bool:
    """Whether a Linear becomes a Float8Linear: not the LM head, dims multiple of 16."""
    if not isinstance(module, nn.Linear) or fqn.split(".")[-1] == "lm_head":
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def convert_fp8(model: nn.Module) -> int:
    """Swap eligible Linear layers of ``model`` for float8 training ones, in place.

    Returns:
        How many layers were converted.

    Raises:
        MinitronError: If torchao is missing or no layer qualifies.
    """
    logging.getLogger("torchao").setLevel(logging.ERROR)  # it warns about its C++ kernels
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise MinitronError("precision: fp8 needs torchao (pip install 'minitron[fp8]')") from None
    count = sum(fp8_eligible(m, name) for name, m in model.named_modules())
    if count == 0:
        raise MinitronError("precision: fp8 found no Linear layer with dims multiple of 16")
    convert_to_float8_training(model, module_filter_fn=fp8_eligible)
    return count


def plain_linears(model: nn.Module) -> nn.Module:
    """Turn float8 training layers back into ``nn.Linear`` sharing the weights, in place."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear) and type(child) is not nn.Linear:
            plain = nn.Linear(
                child.in_features, child.out_features, bias=child.bias is not None, device="meta"
            )
            plain.weight, plain.bias = child.weight, child.bias
            setattr(model, name, plain)
        else:
            plain_linears(child)
    return model

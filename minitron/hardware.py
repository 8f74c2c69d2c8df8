"""What the machine computes natively: bf16 on this CPU or GPU.

Without AVX512-BF16 or AMX, a CPU emulates bf16 matmuls (measured on an AVX2-only
EPYC: 1024x576 @ 576x1536 took 8.3x the fp32 time, 10x under autocast), so bf16
is only a speed-up where the hardware has it. oneDNN, which runs torch's bf16 CPU
matmuls, can be capped below the CPU's own instructions with ``ONEDNN_MAX_CPU_ISA``
(and torch's own kernels with ``ATEN_CPU_CAPABILITY``); both caps are honoured, so
``ONEDNN_MAX_CPU_ISA=AVX2`` on a bf16-capable CPU behaves, and is detected, as an
AVX2-only one.

Every check takes its inputs as arguments with the machine's as defaults, so
tests fake the capability instead of needing the hardware.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

#: CPU flags (as /proc/cpuinfo spells them) that give native bf16 matmuls.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: ``ONEDNN_MAX_CPU_ISA`` values that stop oneDNN short of its bf16 instructions
#: (its names, lower-cased; later ones, AVX512_CORE_BF16 / AMX / AVX10, allow them).
_ONEDNN_NO_BF16 = {
    "sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni",
}  # fmt: skip
#: ``ATEN_CPU_CAPABILITY`` values below torch's AVX512 kernels.
_ATEN_NO_BF16 = {"default", "avx2", "zvector", "vsx"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is absent, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_bf16_native(
    flags: Iterable[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[bool, str]:
    """Whether bf16 matmuls run natively on this CPU, and why (one phrase).

    Args:
        flags: CPU feature flags; default: this machine's (``cpu_flags``, or torch's
            own cpuinfo check where /proc/cpuinfo says nothing).
        env: Environment variables; default ``os.environ``.
    """
    env = os.environ if env is None else env
    flags = set(flags) if flags is not None else _machine_flags()
    have = [f for f in BF16_FLAGS if f in flags]
    if not have:
        return False, "this CPU has no AVX512-BF16 or AMX, so bf16 matmuls are emulated"
    isa = env.get("ONEDNN_MAX_CPU_ISA", "").strip().lower()
    if isa in _ONEDNN_NO_BF16:
        return False, f"ONEDNN_MAX_CPU_ISA={env['ONEDNN_MAX_CPU_ISA']} caps oneDNN below its bf16"
    aten = env.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in _ATEN_NO_BF16:
        return False, f"ATEN_CPU_CAPABILITY={env['ATEN_CPU_CAPABILITY']} caps torch below bf16"
    return True, f"this CPU has native bf16 ({', '.join(have)})"


def _machine_flags() -> set[str]:
    flags = cpu_flags()
    if flags:
        return flags
    import torch

    found = set()
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        found.add("avx512_bf16")
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        found.add("amx_bf16")
    return found


def cuda_bf16_native(device: int | None = None) -> tuple[bool, str]:
    """Whether the (current) CUDA device has bf16 tensor cores (Ampere and newer)."""
    import torch

    index = torch.cuda.current_device() if device is None else device
    name = torch.cuda.get_device_name(index)
    major, minor = torch.cuda.get_device_capability(index)
    if major >= 8:
        return True, f"{name} (compute capability {major}.{minor}) has bf16 tensor cores"
    return False, f"{name} (compute capability {major}.{minor}) has no bf16 tensor cores"

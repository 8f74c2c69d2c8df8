"""Native bf16 detection and ``precision: auto``, with the machine's capability faked."""

from __future__ import annotations

import pytest
import torch

from minitron import hardware
from minitron.commands.distill import DistillConfig, with_precision
from minitron.config import apply_overrides, parse_config
from minitron.distill.precision import resolve_precision, trainer_precision
from minitron.errors import MinitronError

EPYC_AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}  # flags of an AVX2-only EPYC
SAPPHIRE = EPYC_AVX2 | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


def test_reads_flags_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16\n\n")
    assert hardware.cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert hardware.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize(
    ("flags", "env", "native", "says"),
    [
        (EPYC_AVX2, {}, False, "no AVX512-BF16 or AMX"),
        (SAPPHIRE, {}, True, "avx512_bf16, amx_bf16"),
        (EPYC_AVX2 | {"avx512_bf16"}, {}, True, "avx512_bf16"),
        (SAPPHIRE, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False, "ONEDNN_MAX_CPU_ISA=AVX2"),
        (SAPPHIRE, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False, "caps oneDNN"),
        (SAPPHIRE, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True, "native"),
        (SAPPHIRE, {"ONEDNN_MAX_CPU_ISA": "ALL"}, True, "native"),
        (SAPPHIRE, {"ATEN_CPU_CAPABILITY": "avx2"}, False, "ATEN_CPU_CAPABILITY=avx2"),
    ],
)
def test_cpu_bf16_native_from_flags_and_caps(flags, env, native, says):
    got, reason = hardware.cpu_bf16_native(flags, env)
    assert got is native and says in reason


def test_this_machine_agrees_with_torchs_own_cpuinfo(monkeypatch):
    """Independent source: torch's cpuinfo-based check (no caps in the environment)."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    torch_says = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert hardware.cpu_bf16_native()[0] is torch_says


@pytest.mark.parametrize(
    ("native", "expected"), [((True, "fast"), "bf16-mixed"), ((False, "slow"), "32")]
)
def test_auto_picks_bf16_only_where_native(native, expected):
    for on_cuda in (True, False):
        precision, reason = resolve_precision("auto", on_cuda, native)
        assert precision == expected and reason == f"auto: {native[1]}"
    for fixed in ("bf16-mixed", "32", "fp8"):
        assert resolve_precision(fixed, False, native)[0] == fixed
    with pytest.raises(ValueError, match="resolve"):
        trainer_precision("auto", on_cuda=False)


@pytest.mark.parametrize(("native", "expected"), [(False, "32"), (True, "bf16-mixed")])
def test_distill_config_resolves_auto_on_the_cpu(monkeypatch, native, expected):
    monkeypatch.setattr(hardware, "cpu_bf16_native", lambda: (native, "faked"))
    config = parse_config(DistillConfig, {"teacher": "a", "student": "b", "accelerator": "cpu"})
    assert config.precision == "auto"
    resolved, reason = with_precision(config)
    assert resolved.precision == expected and reason == "auto: faked"


def test_forced_bf16_on_an_emulating_cpu_says_32_is_faster(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_native", lambda: (False, "no bf16 here"))
    config = parse_config(
        DistillConfig,
        {"teacher": "a", "student": "b", "accelerator": "cpu", "precision": "bf16-mixed"},
    )
    resolved, reason = with_precision(config)
    assert resolved.precision == "bf16-mixed"
    assert "no bf16 here" in reason and "precision: 32 is several times faster" in reason


def test_set_precision_32_from_the_command_line_is_the_string():
    """YAML reads ``32`` as an int; the demo recipe's own advice is --set precision=32."""
    data = apply_overrides({"teacher": "a", "student": "b"}, ["precision=32"])
    assert data["precision"] == 32
    assert parse_config(DistillConfig, data).precision == "32"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("bf16", "precision must be one of auto, bf16-mixed, 32, fp8 (got 'bf16')"),
        (16, "(got 16, an integer where a string is expected)"),
        (True, "(got True, a boolean where a string is expected)"),
        ([32], "(got [32], a list where a string is expected)"),
    ],
)
def test_choice_errors_show_the_type_when_it_is_the_problem(value, message):
    with pytest.raises(MinitronError) as err:
        parse_config(DistillConfig, {"teacher": "a", "student": "b", "precision": value})
    assert message in str(err.value) and "\n" not in str(err.value)

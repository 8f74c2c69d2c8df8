"""The ``minitron bench`` command: its typed config and the run that writes ``bench.json``.

Sizes come from each model's config on the meta device (free, even for 70B).
Speed needs real tensors: a checkpoint is loaded with ``minitron.io.load_model``;
a config-only folder (``config.json`` and no ``*.safetensors``) gets random
weights, which time exactly like trained ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
from pathlib import Path
from typing import Any

import torch

from minitron import __version__
from minitron.bench import (
    BF16_BYTES,
    decode_tokens_per_s,
    estimate_seconds,
    kv_bytes_per_token,
    prefill_tokens_per_s,
    probe_device,
)
from minitron.config import Device, Dtype, config_to_dict
from minitron.errors import MinitronError
from minitron.io import (
    atomic_output_dir,
    check_output_dir,
    load_config,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from minitron.progress import status
from minitron.prune import count_parameters

MEMORY_FRACTION = 0.8  # of the free memory a timed model may take


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """``minitron bench``: size and speed of one or more models.

    Attributes:
        models: Model specs; the first is the reference for speed-ups.
        batch_sizes: Batch sizes to time, each with ``prompt_len`` and ``gen_len``.
        prompt_len: Prompt tokens per sequence (prefill).
        gen_len: New tokens per sequence (decode, one at a time with the KV cache).
        repeats: Timed runs per measurement; the median is reported.
        warmup: Untimed runs before them.
        speed: Time the models. When false, only sizes are reported.
        max_seconds: Skip timing a model whose timing is guessed to take longer
            than this (from ``2 · params`` FLOPs a token and a 0.1 s probe of the
            device); 0 means no limit.
        dtype: Weight and compute dtype for timing (``auto``: bfloat16 on CUDA,
            float32 on CPU). Sizes are always reported for bfloat16.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        threads: CPU threads for torch while timing (default: torch's own choice).
            On a busy shared machine 1 thread gives far steadier numbers.
        trust_remote_code: Allow a Hub model's own code to run.
    """

    models: list[str]
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 8])
    prompt_len: int = 128
    gen_len: int = 32
    repeats: int = 3
    warmup: int = 1
    speed: bool = True
    max_seconds: float = 600.0
    dtype: Dtype = "auto"
    device: Device = "auto"
    threads: int | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise MinitronError(f"threads must be at least 1 (got {self.threads})")
        if not self.models:
            raise MinitronError("give at least one model")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise MinitronError(f"batch sizes must be 1 or more (got {self.batch_sizes})")
        for name in ("prompt_len", "gen_len", "repeats"):
            if getattr(self, name) < 1:
                raise MinitronError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.max_seconds < 0:
            raise MinitronError(f"max_seconds must be 0 or more (got {self.max_seconds})")
        if self.warmup < 0:
            raise MinitronError(f"warmup must be 0 or more (got {self.warmup})")


def setting_key(batch_size: int, prompt_len: int) -> str:
    """``b1_t128``: the key of one measurement in ``bench.json``."""
    return f"b{batch_size}_t{prompt_len}"


def is_config_only(spec: str) -> bool:
    """A local folder with ``config.json`` and no ``*.safetensors`` weights."""
    source = resolve_model(spec)
    return source.kind == "local" and not any(Path(source.location).glob("*.safetensors"))


def _register_architectures() -> None:
    """Import minitron's own model classes (nemotron-nas) so the Auto classes know them."""
    with contextlib.suppress(ImportError):
        import minitron.modeling  # noqa: F401


def model_size(spec: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """Parameters, layers and bf16 memory of ``spec``, from its config alone.

    The model is built on the meta device, so no weights are read or allocated.
    """
    from transformers import AutoModelForCausalLM

    _register_architectures()
    config = load_config(spec, trust_remote_code)
    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        except ValueError as err:
            raise MinitronError(f"could not build model '{spec}': {err}") from None
    params = count_parameters(model)
    return {
        "model": spec,
        "params": params,
        "layers": config.num_hidden_layers,
        "bf16_bytes": params * BF16_BYTES,
        "kv_bytes_per_token": kv_bytes_per_token(config.to_dict()),
        "weights": "random (config only)" if is_config_only(spec) else "checkpoint",
    }


def free_memory(device: str) -> int:
    """Bytes free on ``device`` now (CUDA: the driver's count; CPU: ``MemAvailable``)."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def timing_skip_reason(
    size: dict[str, Any], config: BenchConfig, device: str, device_speed: tuple[float, float]
) -> str | None:
    """Why ``size``'s model is not timed, or ``None`` when it is.

    Timing is skipped when ``config.speed`` is off; when the weights in the timing
    dtype plus the largest KV cache need more than 80% of the free memory; or
    when timing is guessed to take more than ``max_seconds`` on a device
    measured at ``device_speed`` (FLOP/s, bytes/s).
    """
    if not config.speed:
        return "--no-speed"
    dtype = resolve_dtype(config.dtype, device)
    value_bytes = torch.finfo(dtype).bits // 8
    tokens = max(config.batch_sizes) * (config.prompt_len + config.gen_len)
    kv = size["kv_bytes_per_token"] // BF16_BYTES * value_bytes * tokens
    needed = size["params"] * value_bytes + kv
    free = free_memory(device)
    if needed > MEMORY_FRACTION * free:
        return f"needs {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on {device}"
    runs = config.warmup + config.repeats
    guess = estimate_seconds(
        size["params"], value_bytes, config.batch_sizes, config.prompt_len, config.gen_len,
        runs, device_speed,
    )  # fmt: skip
    if config.max_seconds and guess > config.max_seconds:
        return f"would take about {guess:,.0f} s here, over --max-seconds {config.max_seconds:g}"
    return None


def build_model(spec: str, config: BenchConfig, device: str) -> torch.nn.Module:
    """The model to time: its checkpoint, or random weights for a config-only folder."""
    from transformers import AutoModelForCausalLM

    if not is_config_only(spec):
        return load_model(spec, config.dtype, device, config.trust_remote_code)[0]
    dtype = resolve_dtype(config.dtype, device)
    model_config = load_config(spec, config.trust_remote_code)
    with status(f"Building {spec} with random weights"), torch.device(device):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
    return model.eval()


def time_model(model: torch.nn.Module, config: BenchConfig) -> dict[str, dict[str, float]]:
    """Prefill and decode tokens/s at every batch size of ``config``; the model is unchanged."""
    prefill, decode = {}, {}
    for batch in config.batch_sizes:
        key = setting_key(batch, config.prompt_len)
        with status(f"prefill {key}"):
            prefill[key] = prefill_tokens_per_s(
                model, batch, config.prompt_len, config.repeats, config.warmup
            )
        with status(f"decode {key} +{config.gen_len}"):
            decode[key] = decode_tokens_per_s(
                model, batch, config.prompt_len, config.gen_len, config.repeats, config.warmup
            )
    return {"prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode}


def add_speedups(models: list[dict[str, Any]]) -> None:
    """Set each entry's ``speedup``: decode tokens/s over the first model's, per setting."""
    reference = models[0].get("decode_tokens_per_s", {})
    for entry in models:
        decode = entry.get("decode_tokens_per_s", {})
        entry["speedup"] = {k: v / reference[k] for k, v in decode.items() if k in reference}


def run_bench(
    config: BenchConfig, output: str | Path | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Measure every model of ``config``; write ``bench.json`` into ``output`` when given.

    Every spec and the output folder are checked before anything is timed.

    Returns:
        The ``bench.json`` record (see docs/bench.md).
    """
    if output is not None:
        output = check_output_dir(output, overwrite, protect=config.models)
    device = resolve_device(config.device)
    sizes = [model_size(spec, config.trust_remote_code) for spec in config.models]
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or threads)
    try:
        _time_all(sizes, config, device)
        record = {
            "kind": "bench",
            "device": device,
            "dtype": str(resolve_dtype(config.dtype, device)).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
            "models": sizes,
            "config": config_to_dict(config),
            "minitron_version": __version__,
        }
    finally:
        torch.set_num_threads(threads)
    if output is not None:
        with atomic_output_dir(output, overwrite) as tmp:
            (tmp / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
        record["output"] = str(output)
    return record


def _time_all(sizes: list[dict[str, Any]], config: BenchConfig, device: str) -> None:
    """Add timings (or the reason there are none) and speed-ups to each entry of ``sizes``."""
    dtype = resolve_dtype(config.dtype, device)
    speed = probe_device(torch.device(device), dtype) if config.speed else (0.0, 0.0)
    for size in sizes:
        size["timing_skipped"] = timing_skip_reason(size, config, device, speed)
        if size["timing_skipped"] is None:
            model = build_model(size["model"], config, device)
            size.update(time_model(model, config))
            del model
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()  # so the next model's memory check sees it freed
    add_speedups(sizes)

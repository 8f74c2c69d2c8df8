"""``minitron bench``: sizes and tokens/s of models side by side, speed-up vs the first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from minitron.cli.app import app, gib, guarded, out
from minitron.config import parse_config

if TYPE_CHECKING:
    from minitron.commands.bench import BenchConfig


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got '{text}'") from None


@app.command()
@guarded
def bench(
    models: Annotated[
        list[str],
        typer.Argument(help="Models: alias, folder (config-only = random weights), .gguf, Hub id."),
    ],
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes to time.")] = "1,8",
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens (prefill).")] = 128,
    gen_len: Annotated[int, typer.Option(help="New tokens decoded one at a time.")] = 32,
    repeats: Annotated[int, typer.Option(help="Timed runs; the median is reported.")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 1,
    speed: Annotated[
        bool, typer.Option(help="Time prefill and decode (--no-speed: sizes only, instant).")
    ] = True,
    max_seconds: Annotated[
        float, typer.Option(help="Skip timing a model guessed to take longer (0: no limit).")
    ] = 600.0,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads while timing (1 is steadiest on a busy box).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Folder to write bench.json into [default: none].")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the bench.json record instead of a table.")
    ] = False,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow a Hub model's own code to run.")
    ] = False,
) -> None:
    """Parameters, bf16 memory, KV cache per token, prefill/decode tokens/s and speed-up."""
    from minitron.commands.bench import BenchConfig, run_bench

    config = parse_config(
        BenchConfig,
        {
            "models": models, "batch_sizes": _int_list(batch_sizes), "prompt_len": prompt_len,
            "gen_len": gen_len, "repeats": repeats, "warmup": warmup, "speed": speed,
            "max_seconds": max_seconds, "dtype": dtype, "device": device,
            "threads": threads, "trust_remote_code": trust_remote_code,
        },
    )  # fmt: skip
    record = run_bench(config, output, overwrite)
    if json_output:
        typer.echo(json.dumps(record, indent=2))
        return
    _print_sizes(record)
    if any(m["timing_skipped"] is None for m in record["models"]):
        _print_speed(record, config)
    for entry in record["models"]:
        if entry["timing_skipped"] and entry["timing_skipped"] != "--no-speed":
            out.print(f"{entry['model']}: not timed ({entry['timing_skipped']}); try --no-speed")
    if output is not None:
        out.print(f"wrote {output / 'bench.json'}")


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.4f}×"


def _name(entry: dict[str, Any]) -> str:
    """A short table label: a folder's own name; ``*`` marks random weights."""
    spec = entry["model"]
    name = Path(spec).name if Path(spec).expanduser().exists() else spec
    return name + ("*" if entry["weights"] != "checkpoint" else "")


def _print_sizes(record: dict[str, Any]) -> None:
    table = Table(title="model sizes in bf16 (* = random weights from a config-only folder)")
    table.add_column("model", overflow="fold")
    for name in ("params", "vs first", "layers", "bf16 weights", "KV/token"):
        table.add_column(name, justify="right", no_wrap=True)
    first = record["models"][0]
    for m in record["models"]:
        table.add_row(
            _name(m), f"{m['params']:,}", _ratio(m["params"], first["params"]),
            str(m["layers"]), gib(m["bf16_bytes"]), f"{m['kv_bytes_per_token'] / 1024:,.1f} KiB",
        )  # fmt: skip
    out.print(table)


def _print_speed(record: dict[str, Any], config: BenchConfig) -> None:
    table = Table(
        title=f"tokens/s on {record['device']} ({record['dtype']}), prompt {config.prompt_len}, "
        f"+{config.gen_len} new, median of {config.repeats}; speed-up = decode vs the first model"
    )
    table.add_column("model", overflow="fold")
    for name in ("batch", "prefill tok/s", "decode tok/s", "speed-up"):
        table.add_column(name, justify="right", no_wrap=True)
    for m in record["models"]:
        for key, decode in m.get("decode_tokens_per_s", {}).items():
            speedup = m["speedup"].get(key)
            table.add_row(
                _name(m), key, f"{m['prefill_tokens_per_s'][key]:,.1f}", f"{decode:,.1f}",
                f"{speedup:.2f}×" if speedup is not None else "—",
            )  # fmt: skip
    out.print(table)

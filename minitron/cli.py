"""The ``minitron`` command line: parse, build the typed config, call the function, print.

Every user error is one line on stderr and exit code 2; layer indices are
0-indexed everywhere.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from minitron import __version__
from minitron.config import ImportanceConfig, PruneConfig, load_recipe, parse_config
from minitron.errors import MinitronError
from minitron.progress import console

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as cli_errors
except ImportError:  # older typer uses click itself
    from click import exceptions as cli_errors

app = typer.Typer(
    name="minitron",
    help="Compress Llama-family models with NVIDIA's Minitron recipes on plain transformers "
    "checkpoints: score layers (importance), then drop them (prune). "
    "Layer indices are 0-indexed everywhere.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)  # stdout: results only; progress and errors go to stderr


def _quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ``MinitronError`` into one red line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _quiet_libraries()
            return command(*args, **kwargs)
        except MinitronError as err:
            console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def run(argv: Sequence[str] | None = None) -> None:
    """Console entry point: ``app()``, except that usage errors (an unknown flag,
    a value of the wrong type) are one line and exit code 2, like every error."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="minitron", standalone_mode=False)
    except cli_errors.NoArgsIsHelpError as err:
        typer.echo(err.format_message())
        code = 0
    except cli_errors.UsageError as err:
        hint = f" (see: {err.ctx.command_path} --help)" if err.ctx else ""
        message = " ".join(err.format_message().split())
        console.print(f"[bold red]error:[/] {escape(message)}{hint}", soft_wrap=True)
        code = 2
    except cli_errors.ClickException as err:
        console.print(f"[bold red]error:[/] {escape(err.format_message())}", soft_wrap=True)
        code = err.exit_code
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


def _version(value: bool) -> None:
    if value:
        out.print(f"minitron {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Compress Llama-family models with NVIDIA's Minitron recipes."""


def format_layers(layers: Sequence[int] | None) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    if layers is None:
        return "chosen by importance when weights are scored"
    if not layers:
        return "none"
    parts, start = [], layers[0]
    for prev, cur in zip(layers, [*layers[1:], None], strict=True):
        if cur != prev + 1:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(parts)


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


@app.command()
@guarded
def importance(
    model: Annotated[
        str, typer.Argument(help="Embedded alias, local folder, .gguf file or Hub id.")
    ] = "smollm2-135m",
    metric: Annotated[str, typer.Option(help="bi | angular | loss")] = "loss",
    block_size: Annotated[
        int, typer.Option(help="Layers per contiguous block scored besides single layers.")
    ] = 1,
    data: Annotated[
        str, typer.Option(help="stdlib | file or folder (.txt/.jsonl/.parquet) | Hub dataset id.")
    ] = "stdlib",
    subset: Annotated[str | None, typer.Option(help="Hub dataset configuration.")] = None,
    split: Annotated[str, typer.Option(help="Hub dataset split.")] = "train",
    text_column: Annotated[str, typer.Option(help="Text column or JSON key.")] = "text",
    streaming: Annotated[bool, typer.Option(help="Stream a Hub dataset.")] = False,
    samples: Annotated[int, typer.Option(help="Calibration sequences.")] = 32,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    output: Annotated[
        Path | None, typer.Option(help="Output folder [default: runs/importance/<model>-<metric>].")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow a Hub model's own code to run.")
    ] = False,
) -> None:
    """Score how much each layer (and each block of --block-size layers) matters."""
    from minitron.importance import run_importance

    config = parse_config(
        ImportanceConfig,
        {
            "model": model, "metric": metric, "block_size": block_size, "dtype": dtype,
            "device": device, "trust_remote_code": trust_remote_code,
            "data": {
                "source": data, "subset": subset, "split": split, "text_column": text_column,
                "streaming": streaming, "samples": samples, "seq_len": seq_len,
                "batch_size": batch_size, "heldout": 0,
            },
        },
    )  # fmt: skip
    slug = Path(model.rstrip("/")).name.removesuffix(".gguf")
    target = output or Path("runs/importance") / f"{slug}-{metric}"
    result = run_importance(config, target, overwrite)
    _print_scores(result)
    out.print(f"wrote {target}/scores.json and {target}/importance.png")


def _print_scores(result: Any) -> None:
    """Tables of single-layer and block scores with bars; least important marked."""
    floor = result.baseline_loss if result.metric == "loss" else 0.0

    def bars(scores: list[float]) -> list[str]:
        """Bars scaled within one table, from the floor (unpruned loss, or 0) to the top."""
        finite = [s for s in scores if math.isfinite(s)] or [floor]
        span = (max(finite) - floor) or 1.0
        return [
            "█" * max(1, round(30 * (s - floor) / span)) if math.isfinite(s) else "n/a"
            for s in scores
        ]

    picked_layers = set(result.least_important_layers(result.block_size))
    picked_block = result.least_important_block()
    loss = result.metric == "loss"
    sections = [(result.layers, 1, picked_layers)]
    if result.block_size > 1:
        sections.append((result.blocks, result.block_size, {picked_block}))
    for scores, size, picked in sections:
        what = "single layer" if size == 1 else f"block of {size} layers"
        title = f"LM loss with each {what} removed" if loss else f"{result.metric} of each {what}"
        table = Table(title=f"{title} (0-indexed, higher = more important)")
        table.add_column("layers" if size > 1 else "layer", justify="right")
        table.add_column(result.metric, justify="right")
        if loss:
            table.add_column("perplexity", justify="right")
        table.add_column("")
        for i, (score, bar) in enumerate(zip(scores, bars(scores), strict=True)):
            mark = i in picked
            label = f"{i}-{i + size - 1}" if size > 1 else str(i)
            cells = [label, f"{score:.4f}"] + ([f"{math.exp(score):.1f}"] if loss else [])
            style = "bold dark_orange" if mark else None
            table.add_row(*cells, bar + (" least important" if mark else ""), style=style)
        out.print(table)
    if loss:
        base = result.baseline_loss
        out.print(f"unpruned model: loss {base:.4f}, perplexity {math.exp(base):.1f}")
    block = result.block(picked_block)
    out.print(
        f"least important block of {result.block_size}: layers {block[0]}-{block[-1]} (0-indexed); "
        f"least important single layers: {format_layers(sorted(picked_layers))}"
    )


@app.command()
@guarded
def prune(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key: --set target_layers=20 (repeatable)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Output folder [default: recipe's output, else runs/<folder>/<recipe name>]."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(help="Plan from the parent's config only; load no weights, write nothing."),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Drop decoder layers as a recipe says and save a standard HF checkpoint."""
    from minitron.prune import dry_run as plan_only
    from minitron.prune import run_prune

    config = load_recipe(recipe, PruneConfig, set_ or [])
    if dry_run:
        report = plan_only(config)
        if json_output:
            typer.echo(json.dumps(report, indent=2))
        else:
            _print_plan(report, config.parent)
        return
    target = output or Path(config.output or Path("runs") / recipe.parent.name / recipe.stem)
    record = run_prune(config, target, overwrite)
    if json_output:
        typer.echo(
            json.dumps({k: v for k, v in record.items() if k not in ("scores", "recipe")}, indent=2)
        )
    else:
        _print_plan(record, config.parent)
        out.print(f"wrote {target} (load it with transformers' AutoModelForCausalLM)")


def _print_plan(report: dict[str, Any], parent: str) -> None:
    table = Table(title=f"depth prune of {parent} (layers 0-indexed)", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    before, after = report["params_before"], report["params_after"]
    table.add_row("parameters", f"{before:,} -> {after:,} ({after / before:.1%})")
    table.add_row("bf16 weights", f"{_gib(2 * before)} -> {_gib(2 * after)}")
    table.add_row("layers", f"{report['layers_before']} -> {report['layers_after']}")
    table.add_row("kept layers", format_layers(report["kept_layers"]))
    table.add_row("dropped layers", format_layers(report["dropped_layers"]))
    if "reason" in report:
        table.add_row("chosen as", report["reason"])
    if "perplexity_before" in report:
        table.add_row(
            "held-out perplexity",
            f"{report['perplexity_before']:.2f} -> {report['perplexity_after']:.2f}",
        )
    out.print(table)

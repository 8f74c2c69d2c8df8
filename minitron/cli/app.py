"""The ``minitron`` Typer app and what every command shares: one-line errors,
exit codes, the stdout console and small formatters.

Every user error is one line on stderr and exit code 2; layer indices are
0-indexed everywhere. Each command lives in a module of its own in this package.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from minitron import __version__
from minitron.errors import MinitronError
from minitron.progress import console

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as cli_errors
except ImportError:  # older typer uses click itself
    from click import exceptions as cli_errors

app = typer.Typer(
    name="minitron",
    help="Compress Llama-family models with NVIDIA's Minitron and Puzzle recipes on plain "
    "transformers checkpoints: score layers (importance), drop layers or edit blocks (prune), "
    "recover by distillation (distill; data prepare tokenizes its data once), then measure "
    "(eval, bench, report). "
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


def gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"

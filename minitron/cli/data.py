"""``minitron data prepare``: tokenize sources into Megatron indexed datasets, print a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from minitron.cli.app import app, guarded, out
from minitron.config import load_recipe

data_app = typer.Typer(
    help="Prepare token datasets once (Megatron's indexed .bin/.idx format) for distill.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@data_app.command()
@guarded
def prepare(
    recipe: Annotated[Path, typer.Argument(help="data prepare recipe YAML (see recipes/).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key: --set num_proc=4 (repeatable)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Output folder [default: recipe's output, else runs/data/<recipe name>]."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print data.json instead of a table.")
    ] = False,
) -> None:
    """Tokenize each source once into DIR/<name>.bin + .idx, with DIR/data.json."""
    from minitron.commands.data import PrepareConfig, run_prepare

    config = load_recipe(recipe, PrepareConfig, set_ or [])
    target = output or Path(config.output or Path("runs") / "data" / recipe.stem)
    manifest = run_prepare(config, target, overwrite)
    if json_output:
        typer.echo(json.dumps(manifest, indent=2))
        return
    table = Table(title=f"prepared with the tokenizer of {config.tokenizer} ({manifest['dtype']})")
    for name in ("source", "format", "documents", "tokens", "on disk"):
        table.add_column(name, justify="left" if name in ("source", "format") else "right")
    for name, record in manifest["sources"].items():
        cut = " (max_tokens)" if record["truncated_at_max_tokens"] else ""
        table.add_row(
            name, record["format"], f"{record['documents']:,}", f"{record['tokens']:,}{cut}",
            f"{record['bytes'] / 2**20:,.1f} MiB",
        )  # fmt: skip
    out.print(table)
    out.print(
        f"{manifest['tokens']:,} tokens in {manifest['seconds']:.1f} s "
        f"({manifest['tokens_per_second']:,} tokens/s, {manifest['num_proc']} process(es))"
    )
    out.print(f"wrote {target}/<source>.bin/.idx and {target}/data.json")

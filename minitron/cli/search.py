"""``minitron search``: plan the Puzzle library and its costs (--dry-run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from minitron.cli.app import app, gib, guarded, out
from minitron.config import load_recipe
from minitron.errors import MinitronError


@app.command()
@guarded
def search(
    recipe: Annotated[Path, typer.Argument(help="Search recipe YAML (see recipes/).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key: --set constraints.params=1e8."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Library and costs from the parent's config only; no weights.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print library.json instead of tables.")
    ] = False,
) -> None:
    """The Puzzle search: per-layer block variants, their costs, one variant per layer."""
    from minitron.commands.search import SearchConfig, library_record

    config = load_recipe(recipe, SearchConfig, set_ or [])
    if not dry_run:
        raise MinitronError(
            "minitron search runs only with --dry-run so far (library and costs); "
            "BLD, replace-1-block scores, the MIP on them and the realised model are not built yet"
        )
    record = library_record(config)
    if json_output:
        typer.echo(json.dumps(record, indent=2))
        return
    first = record["layers"][0]["variants"]
    table = Table(title=f"search library of {config.parent}: {len(first)} variants in layer 0")
    for name in (
        "attention",
        "ffn",
        "params",
        "KV bytes/token",
        f"memory at {config.batch}x{config.seq_len}",
    ):
        table.add_column(name, justify="left" if name in ("attention", "ffn") else "right")
    for v in first:
        cells = [_kind(v["attention"], "attention"), _kind(v["ffn"], "ffn"), f"{v['params']:,}"]
        table.add_row(*cells, f"{v['kv_bytes_per_token']:,}", gib(v["memory_bytes"]))
    out.print(table)
    total = sum(len(layer["variants"]) for layer in record["layers"])
    out.print(f"{len(record['layers'])} layers, {total:,} variants in all")
    out.print(f"parent: {record['parent_params']:,} parameters; outside the layers "
              f"{record['non_layer_params']:,}")  # fmt: skip
    out.print(f"smallest choice: {record['smallest']['params']:,.0f} parameters, "
              f"{record['smallest']['memory_gib']:.2f} GiB")  # fmt: skip


def _kind(sub: dict, which: str) -> str:
    if sub.get("no_op"):
        return "no_op"
    if sub.get("replace_with_linear"):
        return "linear"
    return (
        f"g{sub['n_heads_in_group']}" if which == "attention" else f"ffn_mult {sub['ffn_mult']:g}"
    )

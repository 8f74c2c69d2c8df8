"""``minitron report``: the side-by-side table of parent, pruned and distilled models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from minitron.cli.app import app, guarded, out
from minitron.config import parse_config


@app.command()
@guarded
def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Folders with prune/distill/results/bench.json (or one folder down)."),
    ],
    output: Annotated[Path, typer.Option(help="Folder for report.md, report.json and PNGs.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print report.json instead of the table.")
    ] = False,
) -> None:
    """One table of params, memory, perplexity, scores and speed, read from the runs' JSON."""
    from minitron.commands.report import ReportConfig, run_report

    config = parse_config(
        ReportConfig, {"run_dirs": [str(d) for d in run_dirs], "output": str(output)}
    )
    record, _ = run_report(config, overwrite)
    if json_output:
        typer.echo(json.dumps(record, indent=2))
        return
    table = Table(title="minitron report (every number read from the runs' JSON)")
    table.add_column("")
    for row in record["rows"]:
        table.add_column(f"{row['model']}\n({row['role'] or 'model'})", justify="right")
    for column in record["columns"][2:]:
        texts = [
            row["cells"][column]["text"] if column in row["cells"] else "—"
            for row in record["rows"]
        ]
        table.add_row(column, *texts)
    out.print(table)
    plots = ", ".join(record["plots"]) or "no plots (no scores, speed-ups or loss curves)"
    out.print(f"wrote {output / 'report.md'}, report.json, {plots}")

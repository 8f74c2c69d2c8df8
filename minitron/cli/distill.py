"""``minitron distill``: run a distillation recipe, print the recovery it measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from minitron.cli.app import app, guarded, out
from minitron.config import load_recipe


@app.command()
@guarded
def distill(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key: --set max_steps=20 (repeatable)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Output folder (default: the recipe's output, else runs/<folder>/<recipe "
            "name>); checkpoints and logs go to <output>.work beside it."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest checkpoint in <output>.work.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing output folder and start over.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
) -> None:
    """Distil the teacher's logits into a pruned student (forward KL) with Lightning."""
    from minitron.commands.distill import DistillConfig, run_distill

    config = load_recipe(recipe, DistillConfig, set_ or [])
    target = output or Path(config.output or Path("runs") / recipe.parent.name / recipe.stem)
    record = run_distill(config, target, overwrite=overwrite, resume=resume)
    if record is None:  # not rank 0
        return
    if json_output:
        skip = ("history", "val_history", "recipe", "data")
        typer.echo(json.dumps({k: v for k, v in record.items() if k not in skip}, indent=2))
        return
    _print_result(record)
    out.print(f"wrote {target} (load it with transformers' AutoModelForCausalLM)")


def _print_result(record: dict[str, Any]) -> None:
    table = Table(title=f"distill {record['teacher']} -> {record['student']}")
    table.add_column("held-out")
    for name in ("teacher", "start", "distilled"):
        table.add_column(name, justify="right")
    teacher = record.get("teacher_val") or {}
    start, final = record.get("start") or {}, record.get("final") or {}
    for key, label in (
        ("val_loss", "LM loss"),
        ("val_ppl", "perplexity"),
        ("val_kl", "KL to teacher"),
    ):
        cells = [teacher.get(key, 0.0 if key == "val_kl" else None), start.get(key), final.get(key)]
        table.add_row(label, *("-" if c is None else f"{c:.4g}" for c in cells))
    out.print(table)
    out.print(
        f"{record['steps']} steps, {record['tokens_seen']:,} tokens "
        f"({record['data_passes']:.2f} passes over the training data)"
    )

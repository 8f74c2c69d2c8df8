"""``minitron prune``: plan or run a prune recipe, print the plan and the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from minitron.cli.app import app, format_layers, gib, guarded, out
from minitron.config import load_recipe


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
    """Drop decoder layers (a standard HF checkpoint) or edit each block (nemotron-nas)."""
    from minitron.commands.prune import PruneConfig, run_prune
    from minitron.commands.prune import dry_run as plan_only

    config = load_recipe(recipe, PruneConfig, set_ or [])
    if dry_run:
        report = plan_only(config)
        if json_output:
            typer.echo(json.dumps(report, indent=2))
        elif config.edits_blocks:
            _print_blocks(report, config.parent)
        elif "shape_after" in report:
            _print_width(report, config.parent)
        else:
            _print_plan(report, config.parent)
        return
    target = output or Path(config.output or Path("runs") / recipe.parent.name / recipe.stem)
    record = run_prune(config, target, overwrite)
    if json_output:
        hidden = ("scores", "recipe", "layers", "width_plan")
        typer.echo(json.dumps({k: v for k, v in record.items() if k not in hidden}, indent=2))
    elif config.edits_blocks:
        _print_blocks(record, config.parent)
        out.print(f"wrote {target} (import minitron, then transformers' AutoModelForCausalLM)")
    elif "shape_after" in record:
        _print_width(record, config.parent)
        out.print(f"wrote {target} (load it with transformers' AutoModelForCausalLM)")
    else:
        _print_plan(record, config.parent)
        out.print(f"wrote {target} (load it with transformers' AutoModelForCausalLM)")


def _print_plan(report: dict[str, Any], parent: str) -> None:
    table = Table(title=f"depth prune of {parent} (layers 0-indexed)", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    before, after = report["params_before"], report["params_after"]
    table.add_row("parameters", f"{before:,} -> {after:,} ({after / before:.1%})")
    table.add_row("bf16 weights", f"{gib(2 * before)} -> {gib(2 * after)}")
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


def _print_blocks(report: dict[str, Any], parent: str) -> None:
    """Totals, then one row per run of consecutive layers with the same edit."""
    from minitron.nas.rules import runs_of_blocks

    table = Table(title=f"block edits of {parent} (nemotron-nas, layers 0-indexed)")
    for name in ("layers", "before", "after", "params / layer"):
        table.add_column(name, justify="right" if name.startswith("params") else "left")
    blocks = report.get("blocks") or report["layers"]  # dry run / prune.json records
    keys = [(b["before"], b["after"], b["params_after"]) for b in blocks]
    for first, last, (before, after, params) in runs_of_blocks(keys):
        layers = f"{first}" if first == last else f"{first}-{last}"
        table.add_row(layers, before, "same" if after == before else after, f"{params:,}")
    out.print(table)
    before, after = report["params_before"], report["params_after"]
    out.print(f"parameters {before:,} -> {after:,} ({after / before:.1%})")
    out.print(f"bf16 weights {gib(2 * before)} -> {gib(2 * after)}")
    if report.get("serve_with"):
        out.print(f"every block kind is served by {report['serve_with']}")
    memory = report.get("calibration_memory")
    if memory:
        peak = memory.get("measured_peak_bytes", memory["peak_bytes"])
        where = "on the CPU" if memory["accumulate_on"] == "cpu" else "on the model's device"
        out.print(
            f"calibration: {memory['passes']} pass(es), accumulators up to {gib(peak)} {where}"
        )
    if "perplexity_before" in report:
        ppl = f"{report['perplexity_before']:.2f} -> {report['perplexity_after']:.2f}"
        out.print(f"held-out perplexity {ppl}")


_WIDTHS = (
    ("hidden size", "hidden_size"),
    ("MLP width", "intermediate_size"),
    ("attention heads", "num_attention_heads"),
    ("K/V heads", "num_key_value_heads"),
)


def _print_width(report: dict[str, Any], parent: str) -> None:
    """The shape before and after; for a target, the candidates (and their KL when scored)."""
    target = "budget_params" in report
    kind = "target" if target else "width"
    table = Table(title=f"{kind} prune of {parent} (layers 0-indexed)", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    before, after = report["params_before"], report["params_after"]
    if target:
        table.add_row("budget", f"{report['budget_params']:,} parameters")
        if "reason" not in report:
            table.add_row(
                "after", "the closest candidate (a run keeps the lowest KL of the scored)"
            )
    table.add_row("parameters", f"{before:,} -> {after:,} ({after / before:.1%})")
    table.add_row("bf16 weights", f"{gib(2 * before)} -> {gib(2 * after)}")
    table.add_row("layers", f"{report['layers_before']} -> {report['layers_after']}")
    for label, key in _WIDTHS:
        before, after = report["shape_before"][key], report["shape_after"][key]
        table.add_row(label, "per block" if before is None else f"{before} -> {after}")
    table.add_row("head_dim", f"{report['head_dim']} (written to the config)")
    if report.get("dropped_layers") is not None:
        table.add_row("dropped layers", format_layers(report["dropped_layers"]) or "none")
    elif not target:
        table.add_row("dropped layers", "chosen by importance when run")
    if "reason" in report:
        table.add_row("chosen as", report["reason"])
    if "perplexity_before" in report:
        table.add_row(
            "held-out perplexity",
            f"{report['perplexity_before']:.2f} -> {report['perplexity_after']:.2f}",
        )
    out.print(table)
    if target:
        _print_candidates(report)


def _print_candidates(report: dict[str, Any]) -> None:
    scored = "kl" in (report.get("candidates") or [{}])[0]
    title = (
        "scored candidates (held-out KL to the parent, no training)"
        if scored
        else f"{report['candidates_within_budget']:,} candidates within the budget, "
        f"closest first; the first {report['scored']} are scored when run"
    )
    table = Table(title=title)
    for name in ("#", "layers", "hidden", "MLP", "heads", "K/V", "parameters", "bf16"):
        table.add_column(name, justify="right")
    if scored:
        table.add_column("KL", justify="right")
    best = min(report["candidates"], key=lambda c: c["kl"]) if scored else None
    for i, c in enumerate(report["candidates"]):
        cells = [
            str(i), str(c["layers"]), str(c["hidden_size"]), str(c["intermediate_size"]),
            str(c["num_attention_heads"]), str(c["num_key_value_heads"]), f"{c['params']:,}",
            f"{c['bf16_gib']:.2f} GiB",
        ]  # fmt: skip
        if scored:
            cells.append(f"{c['kl']:.4f}" + (" best" if c is best else ""))
        table.add_row(*cells, style="bold dark_orange" if c is best else None)
    out.print(table)

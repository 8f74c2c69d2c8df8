"""``minitron search``: the Puzzle search, or its library and costs alone (--dry-run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from minitron.cli.app import app, gib, guarded, out
from minitron.config import load_recipe


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
    output: Annotated[
        Path | None,
        typer.Option(help="Output folder [default: recipe's output, else runs/<folder>/<name>]."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing output folder and an earlier run's stages.")
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run at its stage (and BLD step).")
    ] = False,
    solution: Annotated[
        int | None,
        typer.Option(
            help="Write the MIP's K-th solution (0 = best summed score) instead of "
            "the best realised one."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print library.json instead of tables.")
    ] = False,
) -> None:
    """The Puzzle search: per-layer block variants, their costs, one variant per layer."""
    from minitron.commands.search import SearchConfig, library_record, run_search

    config = load_recipe(recipe, SearchConfig, set_ or [])
    if not dry_run:
        target = output or Path(config.output or Path("runs") / recipe.parent.name / recipe.stem)
        result = run_search(config, target, overwrite, resume, solution)
        if result is None:  # another process of a multi-device run: rank 0 reports
            return
        if json_output:
            typer.echo(json.dumps({k: v for k, v in result.items() if k != "recipe"}, indent=2))
            return
        _print_solutions(result)
        out.print(f"wrote {target}/model (import minitron, then AutoModelForCausalLM), "
                  f"search.json, library.json, blocks.yaml")  # fmt: skip
        return
    record = library_record(config)
    if json_output:
        typer.echo(json.dumps(record, indent=2))
        return
    first = record["layers"][0]["variants"]
    timed = first[0]["runtime_ms"] is not None
    table = Table(title=f"search library of {config.parent}: {len(first)} variants in layer 0")
    memory = f"memory at {config.batch}x{config.seq_len}"
    columns = ["attention", "ffn", "params", "KV bytes/token", memory]
    if timed:
        columns += ["prefill ms", "decode ms"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("attention", "ffn") else "right")
    for v in first:
        cells = [_kind(v["attention"], "attention"), _kind(v["ffn"], "ffn"), f"{v['params']:,}",
                 f"{v['kv_bytes_per_token']:,}", gib(v["memory_bytes"])]  # fmt: skip
        if timed:
            cells += [f"{v['runtime_ms']['prefill']:.3f}", f"{v['runtime_ms']['decode']:.4f}"]
        table.add_row(*cells)
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


def _print_solutions(result: dict) -> None:
    table = Table(title=f"solutions of the search on {result['parent']} (best realised KL first)")
    for name in ("MIP rank", "params", "summed score", "realised KL", "perplexity"):
        table.add_column(name, justify="right")
    for i, s in enumerate(result["solutions"]):
        table.add_row(
            str(s["rank_by_summed_score"]), f"{s['params']:,}", f"{s['score']:.4f}",
            f"{s['realised_kl']:.4f}", f"{s['realised_perplexity']:.2f}",
            style="bold dark_orange" if i == 0 else None,
        )  # fmt: skip
    out.print(table)
    out.print(f"parent: {result['parent_params']:,} parameters, "
              f"perplexity {result['parent_perplexity']:.2f}")  # fmt: skip
    if result.get("bld"):
        bld = result["bld"]
        kept = bld.get("kept_initial") or 0
        note = f" ({kept} ended worse and kept their start)" if kept else ""
        after = bld.get("mean_nmse_kept", bld["mean_nmse_trained"])
        out.print(
            f"blockwise distillation: {bld['variants']} sub-blocks, "
            f"{bld['tokens_per_variant']:,} tokens each; mean held-out NMSE "
            f"{bld['mean_nmse_init']:.4f} -> {after:.4f}{note}"
        )
    if result.get("baselines"):
        best = result["solutions"][0]
        table = Table(title="the search against baselines at the same budget (held-out text)")
        for name in ("model", "params", "KL to parent", "perplexity"):
            table.add_column(name, justify="left" if name == "model" else "right")
        rows = [("this search", best)] + [
            (name.replace("_", " "), b) for name, b in result["baselines"].items()
        ]
        for name, row in rows:
            table.add_row(name, f"{row['params']:,}", f"{row['realised_kl']:.4f}",
                          f"{row['realised_perplexity']:.2f}")  # fmt: skip
        out.print(table)
    if result.get("rank_correlation") is not None:
        out.print(
            f"rank correlation of summed and realised scores: {result['rank_correlation']:.3f}"
        )

"""``minitron eval``: lm-eval tasks, presets and perplexity; results.json and a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from minitron.cli.app import app, guarded, out
from minitron.config import parse_config


@app.command(name="eval")
@guarded
def eval_command(
    models: Annotated[
        list[str] | None,
        typer.Argument(help="Models (alias, folder, .gguf, Hub id), evaluated in turn."),
    ] = None,
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            help="lm-eval tasks or groups, comma-separated or repeated; "
            "'minitron-suite' is the offline suite, 'perplexity' adds perplexity."
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="minitron-4b | nemotron-51b: a model card's settings.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Documents per task (quick checks).")] = None,
    include_path: Annotated[
        list[Path] | None, typer.Option(help="Folder of task YAMLs (repeatable).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Output folder [default: runs/eval/<first model>].")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    allow_code_execution: Annotated[
        bool, typer.Option(help="Run generated programs of code tasks (sandboxed).")
    ] = False,
    unsafe_code_execution_without_sandbox: Annotated[
        bool,
        typer.Option(
            help="Where the OS sandbox cannot be made, run them anyway, limited only by "
            "rlimits and an audit hook (see docs/eval.md)."
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(help="lm-eval batch size.")] = 1,
    ppl_data: Annotated[
        str, typer.Option(help="Perplexity text: stdlib | file or folder | Hub dataset id.")
    ] = "stdlib",
    ppl_subset: Annotated[str | None, typer.Option(help="Hub dataset configuration.")] = None,
    ppl_split: Annotated[str, typer.Option(help="Hub dataset split.")] = "train",
    ppl_text_column: Annotated[str, typer.Option(help="Text column or JSON key.")] = "text",
    ppl_tokens: Annotated[int, typer.Option(help="Tokens of text to score.")] = 4096,
    ppl_window: Annotated[int, typer.Option(help="Tokens per window.")] = 512,
    ppl_stride: Annotated[int, typer.Option(help="Tokens between window starts.")] = 256,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow a Hub model's own code to run.")
    ] = False,
) -> None:
    """Score models on lm-eval tasks (a model card's preset, the offline suite, your own
    task folders) and perplexity; write results.json and per-sample logs."""
    from minitron.commands.eval import EvalConfig, run_eval

    names = [t.strip() for item in tasks or [] for t in item.split(",") if t.strip()]
    specs = models or ["smollm2-135m"]
    config = parse_config(
        EvalConfig,
        {
            "models": specs, "tasks": names, "preset": preset, "limit": limit,
            "include_path": [str(p) for p in include_path or []],
            "allow_code_execution": allow_code_execution,
            "unsafe_code_execution_without_sandbox": unsafe_code_execution_without_sandbox,
            "batch_size": batch_size,
            "dtype": dtype, "device": device, "trust_remote_code": trust_remote_code,
            "perplexity": {
                "source": ppl_data, "subset": ppl_subset, "split": ppl_split,
                "text_column": ppl_text_column, "tokens": ppl_tokens, "window": ppl_window,
                "stride": ppl_stride,
            },
        },
    )  # fmt: skip
    slug = Path(specs[0].rstrip("/")).name.removesuffix(".gguf")
    target = output or Path("runs/eval") / slug
    record = run_eval(config, target, overwrite)
    out.print(results_table(record))
    out.print(f"wrote {target}/results.json and per-sample logs in {target}/samples/")


def results_table(record: dict[str, Any]) -> Table:
    """Tasks as rows, one column per model, then the published numbers (parent, model)."""
    preset = record.get("preset")
    limit = record.get("limit")
    title = f"minitron eval{f' --preset {preset}' if preset else ''}"
    title += f" (--limit {limit}: not comparable to the paper)" if limit else ""
    table = Table(title=title)
    for name, justify in (("task", "left"), ("metric", "left"), ("shots", "right"), ("n", "right")):
        table.add_column(name, justify=justify)
    for row in record["models"]:
        table.add_column(row["model"], justify="right")
    published = published_columns(record)
    for header, _ in published:
        table.add_column(header, justify="right")
    tasks = list(dict.fromkeys(t for row in record["models"] for t in row["tasks"]))
    for task in tasks:
        first = next(row["tasks"][task] for row in record["models"] if task in row["tasks"])
        cells = [task, first["metric"], str(first["num_fewshot"]), str(first["samples"])]
        for row in record["models"]:
            score = row["tasks"].get(task)
            cells.append(_percent(score) if score else "-")
        for _, key in published:
            value = first.get(key)
            cells.append(f"{value:.2f}" if value is not None else "-")
        table.add_row(*cells)
    if any(row.get("perplexity") for row in record["models"]):
        ppl = next(row["perplexity"] for row in record["models"] if row.get("perplexity"))
        cells = [f"perplexity ({ppl['data']})", f"window {ppl['window']}/{ppl['stride']}", "-"]
        cells.append(str(ppl["tokens"]))
        for row in record["models"]:
            cells.append(f"{row['perplexity']['value']:.2f}" if row.get("perplexity") else "-")
        table.add_row(*cells, *["-"] * len(published))
    return table


def published_columns(record: dict[str, Any]) -> list[tuple[str, str]]:
    """``(header, task key)`` of the published numbers: ``paper: <parent>``, ``paper: <model>``.

    Without a preset there are none; a results.json from before the ``published``
    entry existed gets one ``published`` column.
    """
    info = record.get("published")
    if info:
        names = [(info.get("parent"), "published_parent"), (info.get("model"), "published")]
        return [(f"paper: {name.split('/')[-1]}", key) for name, key in names if name]
    return [("published", "published")] if record.get("preset") else []


def _percent(score: dict[str, Any]) -> str:
    text = f"{100 * score['value']:.2f}"
    if score.get("stderr") is not None:
        text += f" ± {100 * score['stderr']:.2f}"
    return text

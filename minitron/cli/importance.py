"""``minitron importance``: score layers and blocks, print tables, write scores.json."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from minitron.cli.app import app, format_layers, guarded, out
from minitron.config import parse_config


@app.command()
@guarded
def importance(
    model: Annotated[
        str, typer.Argument(help="Embedded alias, local folder, .gguf file or Hub id.")
    ] = "smollm2-135m",
    metric: Annotated[
        str,
        typer.Option(
            help="bi | angular | loss | task:NAME (an lm-eval task's error) | width "
            "(channels, heads and neurons by activations, for width pruning)."
        ),
    ] = "loss",
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
    task_limit: Annotated[
        int | None, typer.Option(help="task: metric: items scored per candidate.")
    ] = None,
    include_path: Annotated[
        str | None, typer.Option(help="task: metric: folder of extra lm-eval task YAMLs.")
    ] = None,
    num_fewshot: Annotated[
        int | None, typer.Option(help="task: metric: few-shot examples [default: the task's].")
    ] = None,
) -> None:
    """Score how much each layer (and each block of --block-size layers) matters."""
    from minitron.commands.importance import ImportanceConfig, run_importance

    config = parse_config(
        ImportanceConfig,
        {
            "model": model, "metric": metric, "block_size": block_size, "dtype": dtype,
            "device": device, "trust_remote_code": trust_remote_code,
            "task": {"limit": task_limit, "include_path": include_path, "num_fewshot": num_fewshot},
            "data": {
                "source": data, "subset": subset, "split": split, "text_column": text_column,
                "streaming": streaming, "samples": samples, "seq_len": seq_len,
                "batch_size": batch_size, "heldout": 0,
            },
        },
    )  # fmt: skip
    slug = Path(model.rstrip("/")).name.removesuffix(".gguf")
    target = output or Path("runs/importance") / f"{slug}-{metric.replace(':', '-')}"
    result = run_importance(config, target, overwrite)
    if metric == "width":
        _print_width(result)
        out.print(f"wrote {target}/scores.json and {target}/width_*.png")
        return
    _print_scores(result)
    out.print(f"wrote {target}/scores.json and {target}/importance.png")


def _print_scores(result: Any) -> None:
    """Tables of single-layer and block scores with bars; least important marked."""
    task = result.metric.startswith("task:")
    floor = result.baseline_loss if result.metric == "loss" or task else 0.0

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
        title = f"{result.metric} of each {what}"
        if loss or task:
            title = f"{'LM loss' if loss else result.metric + ' error'} with each {what} removed"
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
    if task:
        base = result.baseline_loss
        out.print(f"unpruned model: {result.metric} error {base:.4f} (accuracy {1 - base:.4f})")
    block = result.block(picked_block)
    out.print(
        f"least important block of {result.block_size}: layers {block[0]}-{block[-1]} (0-indexed); "
        f"least important single layers: {format_layers(sorted(picked_layers))}"
    )


def _print_width(scores: Any) -> None:
    """Per layer: heads best to worst and the spread of neuron scores; then channels."""
    table = Table(title="width importance (0-indexed, higher = more important)")
    for name in ("layer", "heads, most important first", "neurons: max", "median", "min"):
        table.add_column(name, justify="left" if name.startswith("heads") else "right")
    for i, (heads, neurons) in enumerate(zip(scores.heads, scores.neurons, strict=True)):
        order = sorted(range(len(heads)), key=lambda h: -heads[h])
        ranked = sorted(neurons)
        cells = [f"{ranked[-1]:.3g}", f"{ranked[len(ranked) // 2]:.3g}", f"{ranked[0]:.3g}"]
        table.add_row(str(i), " ".join(map(str, order)) or "-", *(cells if ranked else ["-"] * 3))
    out.print(table)
    ranked = sorted(range(len(scores.hidden)), key=lambda c: -scores.hidden[c])
    top = ", ".join(f"{c} ({scores.hidden[c]:.3g})" for c in ranked[:8])
    out.print(f"embedding channels, most important: {top}")
    out.print(f"scored on {scores.sequences} sequences ({scores.tokens:,} tokens)")

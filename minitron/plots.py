"""PNG figures of results, drawn with matplotlib's file-only Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minitron.importance import ImportanceResult  # noqa: E402
from minitron.importance.width import WidthScores  # noqa: E402

_LABELS = {
    "bi": "block importance  1 - cos(in, out)",
    "angular": "angular distance  arccos(cos) / pi",
    "loss": "LM loss with it removed",
}
_PLAIN, _PICKED, _BASE = "#4c72b0", "#dd8452", "#55a868"


def plot_importance(result: ImportanceResult, path: str | Path, title: str = "") -> Path:
    """Bar charts of single-layer and block scores, least important highlighted.

    One panel for single layers and, when ``block_size > 1``, one for blocks by
    their first layer. Layers are 0-indexed on the axes as everywhere.
    """
    panels = [("single layers", result.layers, 1)]
    if result.block_size > 1:
        panels.append((f"blocks of {result.block_size} layers", result.blocks, result.block_size))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, (name, scores, size) in zip(axes[:, 0], panels, strict=True):
        picked = (
            set(result.least_important_layers(result.block_size))
            if size == 1
            else {result.least_important_block()}
        )
        colors = [_PICKED if i in picked else _PLAIN for i in range(len(scores))]
        ax.bar(range(len(scores)), scores, color=colors)
        if result.baseline_loss is not None:
            ax.axhline(result.baseline_loss, color=_BASE, linestyle="--", label="unpruned model")
            ax.set_ylim(bottom=min(min(scores), result.baseline_loss) * 0.95)
            ax.legend(loc="best")
        ax.set_xlabel(f"{'layer' if size == 1 else 'layers removed'} (0-indexed)")
        ax.set_ylabel(
            _LABELS.get(result.metric, f"{result.metric} error with it removed"), fontsize=8
        )
        ax.set_title(f"{name}: least important in orange (higher = more important)", fontsize=9)
        labels = [str(i) if size == 1 else f"{i}-{i + size - 1}" for i in range(len(scores))]
        ax.set_xticks(range(len(scores)), labels, rotation=0 if size == 1 else 90, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss_curve(
    history: list[dict], val_history: list[dict], path: str | Path, record: dict | None = None
) -> Path:
    """Training loss and held-out loss / KL against tokens seen, one PNG.

    Args:
        history: Rows with ``tokens`` and ``train_loss`` (one per optimizer step).
        val_history: Rows with ``tokens``, ``val_loss`` and optionally ``val_kl``.
        path: Where to write the figure.
        record: The run's record, for the title (teacher and student specs).
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if history:
        ax.plot([r["tokens"] for r in history], [r["train_loss"] for r in history],
                color=_PLAIN, alpha=0.6, label="train loss (the objective)")  # fmt: skip
    for key, color, label in (
        ("val_loss", _PICKED, "held-out LM loss"),
        ("val_kl", _BASE, "held-out KL to teacher"),
    ):
        rows = [r for r in val_history if key in r]
        if rows:
            ax.plot(
                [r["tokens"] for r in rows], [r[key] for r in rows], "o-", color=color, label=label
            )
    teacher = (record or {}).get("teacher_val") or {}
    if "val_loss" in teacher:
        ax.axhline(
            teacher["val_loss"], color="grey", linestyle="--", label="teacher held-out LM loss"
        )
    ax.set_xlabel("training tokens seen")
    ax.set_ylabel("nats per token")
    ax.legend(loc="best")
    if record:
        ax.set_title(f"distill {record.get('teacher')} -> {record.get('student')}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_width_importance(scores: WidthScores, folder: str | Path, title: str = "") -> list[Path]:
    """One PNG per kind of width unit: ``width_hidden.png``, ``width_heads.png``,
    ``width_neurons.png``.

    Channels and neurons are drawn sorted (the shape of the curve says how much a
    cut of a given size throws away); heads as a layer x head map with the K/V
    groups marked. Layers are 0-indexed.
    """
    import numpy as np

    folder = Path(folder)
    paths = []
    fig, ax = plt.subplots(figsize=(8, 4))
    ranked = sorted(scores.hidden, reverse=True)
    ax.plot(range(1, len(ranked) + 1), ranked, color=_PLAIN)
    ax.set_yscale("log")
    ax.set_xlabel("embedding channels, most important first")
    ax.set_ylabel("score (summed over the layers' norms)")
    ax.set_title(f"{title}: embedding channels".strip(": "), fontsize=9)
    paths.append(_save(fig, folder / "width_hidden.png"))

    rows = [row for row in scores.heads if row]
    if rows:
        width = max(len(row) for row in rows)
        grid = np.full((len(scores.heads), width), np.nan)
        for i, row in enumerate(scores.heads):
            grid[i, : len(row)] = row
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * width + 2), max(3, 0.22 * len(grid) + 1.5)))
        image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="head score")
        kv = max(scores.num_key_value_heads) or 1
        for g in range(1, kv):
            ax.axvline(g * width / kv - 0.5, color="white", linewidth=1)
        ax.set_xlabel(f"query head (white lines: {kv} K/V groups)")
        ax.set_ylabel("layer (0-indexed)")
        ax.set_title(f"{title}: attention heads".strip(": "), fontsize=9)
        paths.append(_save(fig, folder / "width_heads.png"))

    rows = [(i, row) for i, row in enumerate(scores.neurons) if row]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        cmap = plt.get_cmap("viridis")
        last = max(1, len(scores.neurons) - 1)
        ends = (rows[0][0], rows[-1][0])
        for i, row in rows:
            ranked = sorted(row, reverse=True)
            x = np.linspace(0, 1, len(ranked))
            label = f"layer {i}" if i in ends else None
            ax.plot(x, ranked, color=cmap(i / last), linewidth=0.8, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("fraction of the layer's MLP neurons, most important first")
        ax.set_ylabel("neuron score")
        ax.legend(loc="best")
        ax.set_title(f"{title}: MLP neurons, one line per layer".strip(": "), fontsize=9)
        paths.append(_save(fig, folder / "width_neurons.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_search_frontier(
    frontier: list[dict], chosen: dict, path: str | Path, title: str = ""
) -> Path:
    """Summed replace-1-block score against parameters and against memory over a sweep of
    parameter budgets (the MIP's best at each), with the chosen solution marked."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, key, scale, label in (
        (axes[0], "params", 1e6, "parameters (millions)"),
        (axes[1], "memory_bytes", 2**30, "memory at batch x seq_len (GiB)"),
    ):
        ax.plot([p[key] / scale for p in frontier], [p["score"] for p in frontier], "o-",
                color=_PLAIN, label="best summed score at each parameter budget")  # fmt: skip
        ax.plot(chosen[key] / scale, chosen["score"], "*", markersize=14, color=_PICKED,
                label="chosen solution")  # fmt: skip
        ax.set_xlabel(label)
    axes[0].set_ylabel("summed replace-1-block KL (lower is better)")
    axes[0].legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, Path(path))

"""PNG figures of results, drawn with matplotlib's file-only Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minitron.importance import ImportanceResult  # noqa: E402

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

"""PNG figures of a ``minitron report``: accuracy vs parameters, speed-up vs accuracy
kept, and distillation loss curves. matplotlib's file-only Agg backend.

Each function draws from a built ``Report`` and returns ``False`` (writing
nothing) when the report lacks the numbers that figure needs. Averages and
ratios drawn here are for the figures only; the table never shows them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minitron.report import Report, Row  # noqa: E402

_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def _task_columns(report: Report) -> list[str]:
    """The percent score columns (other metrics are not on a comparable scale)."""
    return [c for c in report.columns if c.endswith(" %")]


def _score(row: Row, column: str) -> float | None:
    cell = row.cells.get(column)
    return cell.value * cell.scale if cell else None


def plot_accuracy_vs_params(report: Report, path: Path) -> bool:
    """One line per task: score (%) against parameters, each point named by its model."""
    tasks = _task_columns(report)
    rows = [r for r in report.ordered_rows() if "params" in r.cells]
    points = {
        t: [(r.cells["params"].value, s, r.label) for r in rows if (s := _score(r, t)) is not None]
        for t in tasks
    }
    points = {t: sorted(p) for t, p in points.items() if p}
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (task, series) in zip(_COLORS * 8, points.items(), strict=False):
        ax.plot([p[0] / 1e9 for p in series], [p[1] for p in series], "o-", color=color,
                label=task.removesuffix(" %"))  # fmt: skip
    for series in points.values():
        for params, score, label in series:
            ax.annotate(label.split("/")[-1], (params / 1e9, score), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("parameters (billions)")
    ax.set_ylabel("score (%)")
    ax.set_title("accuracy vs parameters")
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)
    return True


def accuracy_kept(row: Row, parent: Row, tasks: list[str]) -> float | None:
    """Mean over tasks both rows scored of ``score / parent score`` (for the figure)."""
    ratios = [
        s / p
        for t in tasks
        if (s := _score(row, t)) is not None and (p := _score(parent, t))  # skips p = 0
    ]
    return statistics.mean(ratios) if ratios else None


def plot_speedup_vs_accuracy_kept(report: Report, path: Path) -> bool:
    """Speed-up (first bench setting) against accuracy kept relative to the parent."""
    parents = [r for r in report.ordered_rows() if r.role == "parent"]
    speed_columns = [c for c in report.columns if c.startswith("speed-up ")]
    if not parents or not speed_columns:
        return False
    parent, column, tasks = parents[0], speed_columns[0], _task_columns(report)
    points = [
        (kept, row.cells[column].value, row.label)
        for row in report.ordered_rows()
        if column in row.cells and (kept := accuracy_kept(row, parent, tasks)) is not None
    ]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for color, (kept, speedup, label) in zip(_COLORS * 8, points, strict=False):
        ax.scatter([100 * kept], [speedup], color=color, s=40)
        ax.annotate(label.split("/")[-1], (100 * kept, speedup), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xlabel(f"accuracy kept vs {parent.label} (% , mean over tasks)")
    ax.set_ylabel(f"{column} (decode, × first model)")
    ax.set_title("speed-up vs accuracy kept")
    _save(fig, path)
    return True


def plot_loss_curves(report: Report, path: Path) -> bool:
    """Two panels against tokens seen, one colour per distillation run: the training
    loss (``history``) and the validation LM loss (``val_history``, teacher dotted)."""
    runs = [
        r for r in report.distill_runs if r["data"].get("history") or r["data"].get("val_history")
    ]
    if not runs:
        return False
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for color, run in zip(_COLORS * 8, runs, strict=False):
        data, name = run["data"], run["label"].split("/")[-1]
        train = [(h["tokens"], h["train_loss"]) for h in data.get("history") or []]
        val = [(h["tokens"], h["val_loss"]) for h in data.get("val_history") or []]
        if train:
            train_ax.plot(*zip(*train, strict=True), color=color, label=name)
        if val:
            val_ax.plot(*zip(*val, strict=True), "o-", color=color, label=name)
        teacher = (data.get("teacher_val") or {}).get("val_loss")
        if teacher is not None:
            val_ax.axhline(teacher, color=color, linestyle=":", label=f"{name}: teacher")
    for ax, title in ((train_ax, "training loss (KD)"), (val_ax, "validation LM loss")):
        ax.set_xlabel("tokens seen")
        ax.set_title(title)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("distillation")
    _save(fig, path)
    return True


PLOTS: dict[str, Callable[[Report, Path], bool]] = {
    "accuracy_vs_params.png": plot_accuracy_vs_params,
    "speedup_vs_accuracy_kept.png": plot_speedup_vs_accuracy_kept,
    "loss_curves.png": plot_loss_curves,
}


def write_plots(report: Report, folder: Path) -> list[str]:
    """Draw every figure the report has numbers for into ``folder``; return their names."""
    return [name for name, plot in PLOTS.items() if plot(report, folder / name)]


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

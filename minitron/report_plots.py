"""PNG figures of a ``minitron report``: accuracy and perplexity against parameters,
speed-up against accuracy kept and perplexity, and distillation loss curves.
matplotlib's file-only Agg backend.

Each ``draw_*`` function builds a figure from a built ``Report`` and returns
``None`` when the report lacks the numbers that figure needs; ``write_plots``
saves the ones that exist. The points of a figure come from ``*_points``
functions, which tests read directly.

Models are told apart by a marker per role, named in a legend, and never joined
by a line: a pruned and a distilled model have the same parameter count, so
the models are drawn side by side, a few points apart, around their true x.
Score error bars are the standard errors lm-eval reported (``results.json``);
averages and ratios drawn here are for the figures only, the table never
shows them.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from minitron.report import Report, Row  # noqa: E402

_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
ROLE_MARKERS = {"parent": "o", "pruned": "s", "student": "^", "distilled": "D"}
_OTHER_MARKERS = ("v", "P", "X", "*", "h", "<", ">")
# Perplexity columns, held-out ones first: the distillation's validation text is
# held out from its training text; the prune's held-out text is held out from
# calibration; eval's text may overlap a distillation's training text.
_PPL_PREFERENCE = ("val ppl (distill)", "ppl (prune held-out)")
_DODGE_POINTS = 7.0  # horizontal gap between neighbouring models, in points


@dataclasses.dataclass(frozen=True)
class Point:
    """One drawn point: a model's value of one series, with its error bar.

    Attributes:
        series: The column it belongs to (a task or a perplexity), one colour each.
        model: The row's label.
        role: The row's role (``parent``, ``pruned``, ...), one marker each.
        x: Position on the x axis (parameters, or accuracy kept in percent).
        y: Position on the y axis (score in percent, perplexity, speed-up).
        yerr: Half-height of the vertical error bar, or None.
        xerr: Half-width of the horizontal error bar, or None.
    """

    series: str
    model: str
    role: str
    x: float
    y: float
    yerr: float | None = None
    xerr: float | None = None


def markers(report: Report) -> dict[str, str]:
    """A marker per model label: by role for the four roles, distinct ones for the rest."""
    others = iter(_OTHER_MARKERS * 4)
    return {row.label: ROLE_MARKERS.get(row.role) or next(others) for row in report.ordered_rows()}


def _task_columns(report: Report) -> list[str]:
    """The percent score columns (other metrics are not on a comparable scale)."""
    return [c for c in report.columns if c.endswith(" %")]


def perplexity_columns(report: Report) -> list[str]:
    """The perplexity columns, held-out ones first."""
    found = [c for c in report.columns if c.startswith(("ppl (", "val ppl ("))]
    rank = {c: i for i, c in enumerate(_PPL_PREFERENCE)}
    return sorted(found, key=lambda c: rank.get(c, len(rank)))


def _score(row: Row, column: str) -> tuple[float, float | None] | None:
    """``(value, stderr)`` of a cell on its display scale, or None when absent."""
    cell = row.cells.get(column)
    if cell is None:
        return None
    error = cell.stderr * cell.scale if cell.stderr is not None else None
    return cell.value * cell.scale, error


def _measured(report: Report) -> list[Row]:
    """Rows of models that were run (with a parameter count), not published numbers."""
    return [r for r in report.ordered_rows() if "params" in r.cells]


def accuracy_points(report: Report) -> list[Point]:
    """Score (%) ± stderr (%) against parameters, per task and model."""
    return [
        Point(task.removesuffix(" %"), row.label, row.role, row.cells["params"].value, *score)
        for task in _task_columns(report)
        for row in _measured(report)
        if (score := _score(row, task)) is not None
    ]


def perplexity_points(report: Report) -> list[Point]:
    """Each perplexity column's value against parameters, per model (no error bars)."""
    return [
        Point(column, row.label, row.role, row.cells["params"].value, row.cells[column].value)
        for column in perplexity_columns(report)
        for row in _measured(report)
        if column in row.cells
    ]


def accuracy_kept(row: Row, parent: Row, tasks: list[str]) -> tuple[float, float | None] | None:
    """Mean over tasks both rows scored of ``score / parent score``, and its stderr.

    The error propagates both scores' standard errors to first order (delta method),
    tasks taken as independent; it is None when no task has both stderrs.
    """
    ratios, variances = [], []
    for task in tasks:
        mine, theirs = _score(row, task), _score(parent, task)
        if mine is None or theirs is None or not theirs[0]:  # skips a parent score of 0
            continue
        (s, ds), (p, dp) = mine, theirs
        ratios.append(s / p)
        if ds is not None and dp is not None:
            variances.append((ds / p) ** 2 + (s * dp / p**2) ** 2)
    if not ratios:
        return None
    error = math.sqrt(sum(variances)) / len(ratios) if len(variances) == len(ratios) else None
    return statistics.mean(ratios), error


def speedup_points(report: Report) -> tuple[Row, str, list[Point], list[Point]] | None:
    """The parent, the speed-up column, and two sets of points against it.

    Returns:
        ``(parent, column, kept, ppl)``: speed-up against accuracy kept (%, with its
        propagated stderr) and against the first perplexity column that most
        benchmarked models have; or None without a parent or a speed-up.
    """
    parents = [r for r in report.ordered_rows() if r.role == "parent"]
    speed_columns = [c for c in report.columns if c.startswith("speed-up ")]
    if not parents or not speed_columns:
        return None
    parent, column, tasks = parents[0], speed_columns[0], _task_columns(report)
    timed = [r for r in report.ordered_rows() if column in r.cells]
    kept = [
        Point(
            "kept",
            r.label,
            r.role,
            100 * k[0],
            r.cells[column].value,
            xerr=100 * k[1] if k[1] is not None else None,
        )  # fmt: skip
        for r in timed
        if (k := accuracy_kept(r, parent, tasks)) is not None
    ]
    ppl_columns = perplexity_columns(report)
    best = max(ppl_columns, key=lambda c: sum(c in r.cells for r in timed), default=None)
    ppl = [
        Point(best, r.label, r.role, r.cells[best].value, r.cells[column].value)
        for r in timed
        if best and best in r.cells
    ]
    return parent, column, kept, ppl


def _draw(ax: plt.Axes, points: list[Point], report: Report, by_series: bool) -> None:
    """Error bars without lines, a marker per model.

    ``by_series``: a colour per series and each model drawn a few points left or right
    of its x (for a shared x such as parameters); else a colour per model, no shift.
    """
    shapes = markers(report)
    models = [m for m in shapes if any(p.model == m for p in points)]
    series = list(dict.fromkeys(p.series for p in points))
    for point in points:
        place, kind = models.index(point.model), series.index(point.series)
        spread = (kind - (len(series) - 1) / 2) * _DODGE_POINTS / 3
        shift = ((place - (len(models) - 1) / 2) * _DODGE_POINTS * len(series) ** 0.5 + spread) / 72
        shift *= by_series
        moved = ax.transData + ScaledTranslation(shift, 0, ax.figure.dpi_scale_trans)
        color = _COLORS[(kind if by_series else place) % len(_COLORS)]
        ax.errorbar([point.x], [point.y], yerr=point.yerr, xerr=point.xerr,
                    fmt=shapes[point.model], color=color, markersize=6, capsize=3,
                    linestyle="none", transform=moved,
                    label=f"{point.series} | {point.model}")  # fmt: skip
    # shifted artists do not count toward the data limits: add the points and bars by hand
    ax.update_datalim([
        (p.x + sx * (p.xerr or 0), p.y + sy * (p.yerr or 0))
        for p in points for sx in (-1, 1) for sy in (-1, 1)
    ])  # fmt: skip
    ax.margins(x=0.12, y=0.08)
    ax.autoscale_view()
    handles = [
        Line2D([], [], marker=shapes[m], color="0.3", linestyle="none", label=_name(report, m))
        for m in models
    ]
    # legends outside the axes, to the right, so that they hide no point
    place = {"loc": "upper left", "fontsize": 7, "borderaxespad": 0.0}
    model_legend = ax.legend(handles=handles, bbox_to_anchor=(1.02, 1.0), title="model", **place)
    if by_series and len(series) > 1:
        ax.add_artist(model_legend)
        colors = [
            Line2D([], [], marker="s", color=_COLORS[i % len(_COLORS)], linestyle="none", label=s)
            for i, s in enumerate(series)
        ]
        ax.legend(handles=colors, bbox_to_anchor=(1.02, 0.45), title="measure", **place)


def _log_axis(axis: matplotlib.axis.Axis) -> None:
    """Log scale labelled 10, 20, 50, 100, ... in plain numbers."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _name(report: Report, label: str) -> str:
    row = next(r for r in report.rows.values() if r.label == label)
    return f"{row.role or 'model'}: {label.split('/')[-1]}"


def draw_accuracy_vs_params(report: Report) -> plt.Figure | None:
    """Each task's score (%) ± stderr against parameters; a colour per task."""
    points = accuracy_points(report)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _draw(ax, points, report, by_series=True)
    ax.set_xlabel("parameters")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel("score (%), ± standard error")
    ax.set_title("accuracy vs parameters", fontsize=10)
    return fig


def draw_perplexity_vs_params(report: Report) -> plt.Figure | None:
    """Every perplexity column against parameters, log scale; a colour per column."""
    points = perplexity_points(report)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _draw(ax, points, report, by_series=True)
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_xlabel("parameters")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title("perplexity vs parameters (lower is better)", fontsize=10)
    return fig


def draw_speedup(report: Report) -> plt.Figure | None:
    """Speed-up against accuracy kept (± stderr) and, beside it, against perplexity."""
    found = speedup_points(report)
    if not found or not (found[2] or found[3]):
        return None
    parent, column, kept, ppl = found
    panels = [p for p in (kept, ppl) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    for ax, points in zip(axes[0], panels, strict=True):
        _draw(ax, points, report, by_series=False)
        ax.set_ylabel(f"{column} (decode, × first model)")
    if kept:
        axes[0][0].set_xlabel(
            f"accuracy kept vs {parent.label.split('/')[-1]} (%, mean over tasks)"
        )
        axes[0][0].set_title("speed-up vs accuracy kept (± propagated stderr)", fontsize=10)
    if ppl:
        axes[0][-1].set_xscale("log")
        _log_axis(axes[0][-1].xaxis)
        axes[0][-1].set_xlabel(f"{ppl[0].series} (log scale, lower is better)")
        axes[0][-1].set_title("speed-up vs perplexity", fontsize=10)
    return fig


def draw_loss_curves(report: Report) -> plt.Figure | None:
    """Two panels against tokens seen, one colour per distillation run: the training
    loss (``history``) and the validation LM loss (``val_history``, teacher dotted)."""
    runs = [
        r for r in report.distill_runs if r["data"].get("history") or r["data"].get("val_history")
    ]
    if not runs:
        return None
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
    return fig


FIGURES: dict[str, Callable[[Report], plt.Figure | None]] = {
    "accuracy_vs_params.png": draw_accuracy_vs_params,
    "perplexity_vs_params.png": draw_perplexity_vs_params,
    "speedup_vs_accuracy_kept.png": draw_speedup,
    "loss_curves.png": draw_loss_curves,
}


def write_plots(report: Report, folder: Path) -> list[str]:
    """Draw every figure the report has numbers for into ``folder``; return their names."""
    written = []
    for name, draw in FIGURES.items():
        fig = draw(report)
        if fig is not None:
            _save(fig, folder / name)
            written.append(name)
    return written


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps the outside legends
    plt.close(fig)

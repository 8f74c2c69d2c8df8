"""The side-by-side table of a compression run, built only from the JSON the commands wrote.

Every number in the table is a value read from a ``prune.json``, ``distill.json``,
``results.json`` or ``bench.json``; each ``Cell`` keeps the file and the JSON
pointer (RFC 6901) it came from, and the only arithmetic is a display scale
(fractions to percent, bytes to GiB) that the cell records too.

Rows are models, matched across files by the resolved path of a local folder,
else by the spec string. The parent is ``prune.json``'s ``parent`` and
``distill.json``'s ``teacher``; a folder holding ``prune.json`` is the pruned
model and one holding ``distill.json`` the distilled one. When two files give
the same cell different values, the first read wins and the other is listed in
``conflicts``. Files are read in the order: prune, distill, eval, bench.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from minitron.errors import MinitronError

FILES = ("prune.json", "distill.json", "results.json", "bench.json")
# lm-eval metrics reported as fractions in [0, 1]; shown as percent like the model cards
FRACTION_METRICS = ("acc", "exact_match", "pass@", "pass_at", "mc1", "mc2", "f1", "em")
ROLES = ("parent", "pruned", "student", "distilled")  # row order; other models follow
PAPER = "paper"  # the role of a published model's row (a preset's numbers); rows last


@dataclasses.dataclass(frozen=True)
class Cell:
    """One number of the table and where it came from.

    Attributes:
        value: The value exactly as stored in ``file`` at ``key``.
        file: Absolute path of the JSON file.
        key: JSON pointer into that file, e.g. ``/models/0/tasks/hellaswag/value``.
        scale: Display factor (100 for fractions shown as percent, 2**-30 for GiB).
        digits: Decimals shown; ``None`` shows the stored value as it is.
        stderr: The value's standard error as stored in ``file`` (same scale), or None.
        stderr_key: JSON pointer of ``stderr`` in ``file``.
    """

    value: int | float
    file: str
    key: str
    scale: float = 1.0
    digits: int | None = None
    stderr: float | None = None
    stderr_key: str | None = None

    @property
    def text(self) -> str:
        if self.digits is None:
            return f"{self.value:,}" if isinstance(self.value, int) else str(self.value)
        text = f"{self.value * self.scale:,.{self.digits}f}"
        if self.stderr is not None:
            text += f" ± {self.stderr * self.scale:,.{self.digits}f}"
        return text


@dataclasses.dataclass
class Row:
    """A model: its label, its role in the run and its cells by column name."""

    identity: str
    label: str
    role: str = ""
    cells: dict[str, Cell] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Report:
    """Everything the markdown, ``report.json`` and the plots are drawn from."""

    columns: list[str] = dataclasses.field(default_factory=list)
    rows: dict[str, Row] = dataclasses.field(default_factory=dict)  # identity -> row
    inputs: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    conflicts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    distill_runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def ordered_rows(self) -> list[Row]:
        """Parent, pruned, student, distilled, the other models as first seen, then papers."""
        rank = {role: i for i, role in enumerate(ROLES)} | {PAPER: len(ROLES) + 1}
        rows = list(self.rows.values())
        return sorted(rows, key=lambda r: rank.get(r.role, len(ROLES)))

    def row(self, spec: str, label: str | None = None, role: str = "") -> Row:
        """The row of model ``spec`` (created on first use); sets ``role`` if it has none."""
        identity = model_identity(spec)
        row = self.rows.setdefault(identity, Row(identity, label or spec))
        if role and not row.role:
            row.role = role
        return row

    def put(self, row: Row, column: str, data: dict[str, Any], file: Path, *path: Any,
            scale: float = 1.0, digits: int | None = None,
            stderr: tuple[Any, ...] | None = None) -> None:  # fmt: skip
        """Set ``row[column]`` to ``data[path...]`` when that value is a number.

        ``stderr``: the path of the value's standard error in ``data``, kept with the
        cell when it is a number there.
        """
        value = lookup(data, path)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        error = lookup(data, stderr) if stderr else None
        keep = isinstance(error, (int, float)) and not isinstance(error, bool)
        cell = Cell(
            value, str(file), pointer(path), scale, digits,
            error if keep else None, pointer(stderr) if keep and stderr else None,
        )  # fmt: skip
        if column not in self.columns:
            self.columns.append(column)
        kept = row.cells.setdefault(column, cell)
        if kept.value != value:
            self.conflicts.append({
                "model": row.label, "column": column,
                "kept": {"file": kept.file, "key": kept.key, "value": kept.value},
                "other": {"file": cell.file, "key": cell.key, "value": value},
            })  # fmt: skip


def model_identity(spec: str) -> str:
    """The resolved absolute path when ``spec`` is an existing local path, else ``spec``."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def lookup(data: Any, path: tuple[Any, ...]) -> Any:
    """``data[p0][p1]...``, or ``None`` when any step is missing."""
    for part in path:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_dict or in_list):
            return None
        data = data[part]
    return data


def pointer(path: tuple[Any, ...]) -> str:
    """RFC 6901 JSON pointer of ``path``: ``("a", 0, "b/c")`` -> ``/a/0/b~1c``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def resolve_pointer(data: Any, key: str) -> Any:
    """The value at JSON pointer ``key`` of ``data`` (the reverse of ``pointer``)."""
    for token in key.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        data = data[int(token)] if isinstance(data, list) else data[token]
    return data


def find_run_files(run_dir: str | Path) -> list[Path]:
    """The run files in ``run_dir`` and its direct subfolders, in ``FILES`` order.

    Raises:
        MinitronError: If the folder does not exist or holds none of them.
    """
    root = Path(run_dir).expanduser()
    if not root.is_dir():
        raise MinitronError(f"run folder not found: {run_dir}")
    found = []
    for name in FILES:
        found += [p for p in [root / name, *sorted(root.glob(f"*/{name}"))] if p.is_file()]
    if not found:
        raise MinitronError(
            f"{run_dir}: no {', '.join(FILES[:-1])} or {FILES[-1]} in it or one folder down "
            "(run minitron prune, distill, eval or bench first)"
        )
    return found


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, with one-line errors for anything else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MinitronError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise MinitronError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise MinitronError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def build_report(paths: list[Path]) -> Report:
    """Rows and cells from run files (``prune.json`` and friends), files in ``FILES`` order.

    Reads only the given files; changes nothing on disk.
    """
    report = Report()
    order = sorted(paths, key=lambda p: FILES.index(p.name))
    readers = {
        "prune.json": _add_prune, "distill.json": _add_distill,
        "results.json": _add_eval, "bench.json": _add_bench,
    }  # fmt: skip
    for path in order:
        path = path.resolve()
        data = read_json(path)
        report.inputs.append(str(path))
        try:
            readers[path.name](report, data, path)
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            kind = path.name.removesuffix(".json")
            raise MinitronError(
                f"{path}: not a {kind} file written by minitron ({err!r})"
            ) from None
    return report


def _add_prune(report: Report, data: dict[str, Any], path: Path) -> None:
    parent = report.row(data["parent"], role="parent")
    pruned = report.row(str(path.parent), _label(path.parent), role="pruned")
    for row, when in ((parent, "before"), (pruned, "after")):
        report.put(row, "params", data, path, f"params_{when}")
        report.put(row, "layers", data, path, f"layers_{when}")
        report.put(row, "ppl (prune held-out)", data, path, f"perplexity_{when}", digits=2)


def _add_distill(report: Report, data: dict[str, Any], path: Path) -> None:
    teacher = report.row(data["teacher"], role="parent")
    student = report.row(data["student"], role="student")
    final = report.row(str(path.parent), _label(path.parent), role="distilled")
    report.put(final, "params", data, path, "params")
    report.put(final, "layers", data, path, "layers")
    column = "val ppl (distill)"
    report.put(teacher, column, data, path, "teacher_val", "val_ppl", digits=2)
    report.put(student, column, data, path, "start", "val_ppl", digits=2)
    report.put(final, column, data, path, "final", "val_ppl", digits=2)
    report.put(final, "distill tokens", data, path, "tokens_seen")
    report.distill_runs.append({"file": str(path), "label": final.label, "data": data})


def _add_eval(report: Report, data: dict[str, Any], path: Path) -> None:
    for i, entry in enumerate(data["models"]):
        row = report.row(entry["model"])
        report.put(row, "params", data, path, "models", i, "params")
        ppl = entry.get("perplexity") or {}
        if "data" in ppl:
            column = f"ppl ({ppl['data']})"
            report.put(row, column, data, path, "models", i, "perplexity", "value", digits=2)
        for task, result in (entry.get("tasks") or {}).items():
            at = ("models", i, "tasks", task)
            metric = str(result.get("metric", ""))
            if metric.startswith(FRACTION_METRICS):
                report.put(row, f"{task} %", data, path, *at, "value", scale=100.0, digits=1,
                           stderr=(*at, "stderr"))  # fmt: skip
            else:
                report.put(row, f"{task} ({metric})", data, path, *at, "value", digits=4,
                           stderr=(*at, "stderr"))  # fmt: skip
    _add_published(report, data, path)


def _add_published(report: Report, data: dict[str, Any], path: Path) -> None:
    """A preset's published numbers as rows of their own: ``paper: <parent>``, ``paper: <model>``.

    Each number sits in the task's percent column (it is stored in percent: scale 1),
    read from the first model entry that carries it.
    """
    info = data.get("published") or {}
    fallback = f"preset {data['preset']}" if data.get("preset") else "preset"
    whose = (("published_parent", info.get("parent")), ("published", info.get("model") or fallback))
    for key, name in whose:
        if not name:
            continue
        for i, entry in enumerate(data["models"]):
            for task, result in (entry.get("tasks") or {}).items():
                value = result.get(key)
                if value is None or not str(result.get("metric", "")).startswith(FRACTION_METRICS):
                    continue
                row = report.row(f"paper: {name}", role=PAPER)
                if f"{task} %" not in row.cells:
                    report.put(row, f"{task} %", data, path, "models", i, "tasks", task, key)


def _add_bench(report: Report, data: dict[str, Any], path: Path) -> None:
    models = data["models"]
    if models:
        first = report.row(models[0]["model"])
        whom = "the parent" if first.role == "parent" else first.label
        report.notes.append(
            f"speed-up in {path}: decode tokens/s against its first model ({whom}), "
            f"on {data.get('device', '?')} in {data.get('dtype', '?')}"
        )
    for i, entry in enumerate(models):
        row = report.row(entry["model"])
        at = ("models", i)
        report.put(row, "params", data, path, *at, "params")
        report.put(row, "layers", data, path, *at, "layers")
        report.put(row, "bf16 GiB", data, path, *at, "bf16_bytes", scale=2.0**-30, digits=3)
        report.put(
            row, "KV KiB/token", data, path, *at, "kv_bytes_per_token", scale=1 / 1024, digits=1
        )
        for key in entry.get("decode_tokens_per_s") or {}:
            report.put(
                row, f"prefill tok/s {key}", data, path, *at, "prefill_tokens_per_s", key, digits=1
            )
            report.put(
                row, f"decode tok/s {key}", data, path, *at, "decode_tokens_per_s", key, digits=1
            )
            report.put(row, f"speed-up {key}", data, path, *at, "speedup", key, digits=2)


def _label(folder: Path) -> str:
    """A folder's path relative to the working folder when inside it, else absolute."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder.resolve())


def _column_rank(column: str) -> int:
    fixed = {"params": 0, "layers": 1, "bf16 GiB": 2, "KV KiB/token": 3}
    if column in fixed:
        return fixed[column]
    if column.startswith(("ppl", "val ppl", "distill")):
        return 4
    if column.endswith(("%", ")")):  # task scores; perplexity columns matched above
        return 5
    return 6  # throughput


def ordered_columns(report: Report) -> list[str]:
    """Sizes, perplexities, task scores, then throughput."""
    return sorted(report.columns, key=_column_rank)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(report: Report, plots: list[str]) -> str:
    """The report page: the table, where its numbers come from, and the plots."""
    columns = ordered_columns(report)
    lines = [
        "# minitron report",
        "",
        "| model | role | " + " | ".join(map(_escape, columns)) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for row in report.ordered_rows():
        cells = [row.cells[c].text if c in row.cells else "—" for c in columns]
        lines.append(f"| {_escape(row.label)} | {row.role or '—'} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Every number above is read from a JSON file written by a minitron command, never "
        "recomputed; `report.json` gives each cell's file and JSON pointer. Scores (`%`) are "
        "lm-eval's fractions × 100, ± the standard error lm-eval gives; `paper:` rows are a "
        "preset's published numbers (already in percent); "
        "`bf16 GiB` is bytes / 2^30; `KV KiB/token` is bytes / 1024. — means no file "
        "gave that number.",
        "",
        *[f"- {note}" for note in report.notes],
        *[
            f"- conflict: {c['model']} / {c['column']}: kept {c['kept']['value']} from "
            f"{c['kept']['file']}, not {c['other']['value']} from {c['other']['file']}"
            for c in report.conflicts
        ],  # fmt: skip
        "",
        "Inputs:",
        "",
        *[f"- `{path}`" for path in report.inputs],
    ]
    for plot in plots:
        lines += ["", f"![{plot.removesuffix('.png').replace('_', ' ')}]({plot})"]
    return "\n".join(lines) + "\n"


def _cell_json(cell: Cell) -> dict[str, Any]:
    shown = {"text": cell.text, "value": cell.value, "file": cell.file, "key": cell.key}
    error = {"stderr": cell.stderr, "stderr_key": cell.stderr_key} if cell.stderr_key else {}
    return shown | {"scale": cell.scale} | error


def to_json(report: Report, plots: list[str]) -> dict[str, Any]:
    """``report.json``: the table's rows with every cell's value, text and provenance."""
    columns = ordered_columns(report)
    rows = []
    for row in report.ordered_rows():
        cells = {column: _cell_json(cell) for column in columns if (cell := row.cells.get(column))}
        rows.append(
            {"model": row.label, "identity": row.identity, "role": row.role, "cells": cells}
        )
    return {
        "kind": "report",
        "columns": ["model", "role", *columns],
        "rows": rows,
        "notes": report.notes,
        "conflicts": report.conflicts,
        "inputs": report.inputs,
        "plots": plots,
    }

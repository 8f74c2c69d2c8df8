"""The ``minitron report`` command: read the run files, write report.md, report.json, PNGs.

The table is built by ``minitron.report`` and the figures by
``minitron.report_plots``; this module finds the files and writes the output
folder atomically.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from minitron import __version__
from minitron.errors import MinitronError
from minitron.io import atomic_output_dir, check_output_dir
from minitron.report import Report, build_report, find_run_files, to_json, to_markdown
from minitron.report_plots import write_plots


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """``minitron report``: one side-by-side table of a compression run.

    Attributes:
        run_dirs: Folders holding ``prune.json``, ``distill.json``, ``results.json``
            or ``bench.json``, directly or one folder down.
        output: Folder for ``report.md``, ``report.json`` and the PNGs.
    """

    run_dirs: list[str]
    output: str

    def __post_init__(self) -> None:
        if not self.run_dirs:
            raise MinitronError("give at least one run folder")


def run_report(config: ReportConfig, overwrite: bool = False) -> tuple[dict[str, Any], Report]:
    """Build the report of ``config.run_dirs`` and write it to ``config.output``.

    Every input is read and checked before anything is written.

    Returns:
        The ``report.json`` record and the ``Report`` it was drawn from.
    """
    output = check_output_dir(config.output, overwrite, protect=config.run_dirs)
    paths = [path for run_dir in config.run_dirs for path in find_run_files(run_dir)]
    report = build_report(list(dict.fromkeys(p.resolve() for p in paths)))
    with atomic_output_dir(output, overwrite) as tmp:
        plots = write_plots(report, tmp)
        record = to_json(report, plots) | {"minitron_version": __version__}
        (tmp / "report.md").write_text(to_markdown(report, plots), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record, report

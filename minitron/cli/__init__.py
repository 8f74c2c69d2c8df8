"""The ``minitron`` command line: parse, build the typed config, call the function, print.

One module per command; importing them registers each on the shared Typer ``app``.
"""

from minitron.cli import (  # noqa: F401  (registers the commands)
    bench,
    data,
    distill,
    eval,
    importance,
    prune,
    report,
    search,
)
from minitron.cli.app import app, run

__all__ = ["app", "run"]

"""Progress bars and spinners for long work, drawn by rich on stderr.

stdout stays free for results (``--json`` output), so bars never mix with them.
Bars and spinners opened inside each other share one live display (rich
allows only one at a time), each as a line of its own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
#: Draw bars at all (off in the other processes of a multi-device run).
BARS = True
_live: list[Progress] = []  # the one shared display while any task is open


@contextlib.contextmanager
def _task(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """One line on the shared display, opening it for the outermost task."""
    outermost = not _live
    if outermost:
        _live.append(
            Progress(
                SpinnerColumn(),
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
                disable=not (BARS and console.is_terminal),  # no debris in logs and pipes
            )
        )
        _live[0].start()
    display = _live[0]
    task = display.add_task(description, total=total)
    try:
        yield lambda n=1: display.advance(task, n)
    finally:
        display.remove_task(task)
        if outermost:
            display.stop()
            _live.clear()


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Show a bar for ``total`` steps; yield ``advance(n)`` to move it."""
    with _task(description, total) as advance:
        yield advance


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with ``message`` while a step of unknown length runs."""
    with _task(message, None):
        yield


@contextlib.contextmanager
def counting(
    description: str, total: int | None = None, unit: str = "tokens"
) -> Iterator[Callable[[int], None]]:
    """A bar (or, without ``total``, a counter) that also shows ``unit``/s so far."""
    start = time.perf_counter()
    done = 0
    with _task(description, total) as advance:
        display = _live[0]
        task = display.tasks[-1].id

        def add(n: int = 1) -> None:
            nonlocal done
            done += n
            rate = done / max(time.perf_counter() - start, 1e-9)
            display.update(task, description=f"{description}: {done:,} {unit} ({rate:,.0f}/s)")
            advance(n)

        yield add

"""What the command line draws, with rich: tables on stdout and progress bars on stderr.

Library code never draws: it reports progress through the callback seam in ``onnxcomp/progress.py``, and the
CLI passes ``progress_bars(quiet)`` as that callback. Tables take the terminal's width (80 columns, or
``$COLUMNS``, when stdout is a pipe or a file): a long weight name wraps inside its cell rather than pushing the
row past the edge, and numbers are never cut.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table


def print_table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[str]]) -> None:
    """Print a table on stdout: ``columns`` are (header, "left" or "right"); the first column (names) wraps when
    the table would be wider than the terminal, the others never do."""
    rows = [list(row) for row in rows]
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1), collapse_padding=True)
    names = max((len(row[0]) for row in rows), default=0)
    for position, (header, justify) in enumerate(columns):
        table.add_column(header, justify=justify, no_wrap=position > 0, overflow="fold",
                         min_width=min(names, NAME_MIN_WIDTH) if position == 0 else None)
    for row in rows:
        table.add_row(*row)
    console = Console(file=sys.stdout, highlight=False)
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        console.file.write(line.rstrip() + "\n")  # cells are padded to the table's width: no trailing blanks


# A name column is never squeezed below this (it wraps instead); the other columns fit beside it in 80 columns.
NAME_MIN_WIDTH = 14


class ProgressBars:
    """A progress callback (``(label, done, total)``, onnxcomp/progress.py) drawing one rich bar per step on a
    terminal stderr. Log lines written to the same terminal go through rich, above the bars, never into them."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             console=console, redirect_stdout=False, redirect_stderr=False)
        self.tasks: dict[str, TaskID] = {}
        self.running = False

    def __call__(self, label: str, done: int, total: int) -> None:
        task = self.tasks.get(label)
        if task is None or (done == 0 and self.bars.tasks[task].finished):  # a step run again gets a new bar
            task = self.tasks[label] = self.bars.add_task(label, total=total)
        if not self.running:
            self.bars.start()
            self.running = True
        self.bars.update(task, completed=done, total=total)

    def log(self, record: logging.LogRecord, handler: logging.Handler) -> bool:
        """Print a log record above the bars (a logging filter: returns False so the handler does not write it)."""
        self.console.print(handler.format(record), markup=False, highlight=False, soft_wrap=True)
        return False

    def close(self) -> None:
        """Stop redrawing: the bars stay on the screen as they are, the cursor comes back."""
        if self.running:
            self.bars.stop()
            self.running = False


_active: list[tuple[ProgressBars, list[tuple[logging.Handler, object]]]] = []


def progress_bars(quiet: bool, stream=None) -> ProgressBars | None:
    """The CLI's progress callback: bars on ``stream`` (stderr) when it is a terminal and not ``quiet``, else
    ``None`` (pipes, logs and CI output see no bar). ``close_progress_bars()`` ends them."""
    stream = stream if stream is not None else sys.stderr
    if quiet or not getattr(stream, "isatty", lambda: False)():
        return None
    bars = ProgressBars(Console(file=stream, highlight=False))
    filters = []
    for handler in logging.getLogger().handlers:
        if getattr(handler, "stream", None) is stream:
            route = (lambda record, handler=handler: bars.log(record, handler))
            handler.addFilter(route)
            filters.append((handler, route))
    _active.append((bars, filters))
    return bars


def close_progress_bars() -> None:
    """End every bar the CLI opened (before it prints a result or an error)."""
    while _active:
        bars, filters = _active.pop()
        bars.close()
        for handler, route in filters:
            handler.removeFilter(route)

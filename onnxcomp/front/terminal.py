"""What the command line draws, with rich: tables on stdout and progress bars on stderr.

Library code never draws: it reports progress through the callback seam in ``onnxcomp/progress.py``, and the
CLI passes ``progress_bars(quiet)`` as that callback. Tables take the terminal's width (80 columns, or
``$COLUMNS``, when stdout is a pipe or a file): a long weight name wraps inside its cell rather than pushing the
row past the edge, and numbers are never cut.
"""

from __future__ import annotations

import logging
import sys
import time
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

    def note(self, message: str) -> None:
        """A one-line message above the bars (onnxcomp.progress.messages)."""
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def log(self, record: logging.LogRecord, handler: logging.Handler) -> bool:
        """Print a log record above the bars (a logging filter: returns False so the handler does not write it)."""
        self.console.print(handler.format(record), markup=False, highlight=False, soft_wrap=True)
        return False

    def close(self) -> None:
        """Stop redrawing: the bars stay on the screen as they are, the cursor comes back."""
        if self.running:
            self.bars.stop()
            self.running = False


class LineProgress:
    """A progress callback for streams that are not terminals (pipelines, CI logs): whole lines, no redrawing.

    One line when a step starts, then at most one every ``interval`` seconds with the count done and the time
    left at the rate so far, and one when it ends with the time it took."""

    def __init__(self, stream=None, interval: float = 30.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.started: dict[str, float] = {}
        self.written_at = 0.0

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == 0 or label not in self.started:
            self.started[label] = now
            self._write(f"{label}: {total} to do")
            return
        elapsed = now - self.started[label]
        if done >= total:
            self._write(f"{label}: {done}/{total} done in {_duration(elapsed)}")
            del self.started[label]
        elif now - self.written_at >= self.interval:
            self._write(f"{label}: {done}/{total}, about {_duration(elapsed / done * (total - done))} left")

    def note(self, message: str) -> None:
        """A one-line message (onnxcomp.progress.messages), written whole."""
        self._write(message)

    def _write(self, line: str) -> None:
        self.written_at = time.monotonic()
        self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


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


def progress_bars_or_lines(quiet: bool, stream=None) -> ProgressBars | LineProgress | None:
    """For long commands (``--budget``): bars on a terminal, else one line per step (``LineProgress``); ``None``
    when ``quiet``."""
    stream = stream if stream is not None else sys.stderr
    if quiet:
        return None
    return progress_bars(quiet, stream) or LineProgress(stream)


def close_progress_bars() -> None:
    """End every bar the CLI opened (before it prints a result or an error)."""
    while _active:
        bars, filters = _active.pop()
        bars.close()
        for handler, route in filters:
            handler.removeFilter(route)

"""Progress of long steps, reported through a callback so library code stays free of any UI.

Library code wraps its loops in ``track(items, label)``: without a callback installed (the default) it is the
plain iterable. A caller installs one with ``reporting(callback)`` (the Python API's ``progress=`` argument
does this); the callback receives ``(label, done, total)`` once before the first item and after each one.
``TerminalProgress`` is the command line's callback: one bar per step, redrawn in place on stderr; the CLI
installs it only when stderr is a terminal and ``--quiet`` is not given, so pipes and logs see no bar noise.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import TypeVar

Callback = Callable[[str, int, int], None]  # (label, done, total)
T = TypeVar("T")

_current: ContextVar[Callback | None] = ContextVar("onnxcomp_progress", default=None)


@contextlib.contextmanager
def reporting(callback: Callback | None):
    """Send the progress of the steps run inside to ``callback`` (``None`` leaves the current one in place)."""
    if callback is None:
        yield
        return
    token = _current.set(callback)
    try:
        yield
    finally:
        _current.reset(token)


def with_progress(function):
    """Let ``function`` take ``progress=callback``: the progress of the steps it runs is sent there."""
    @functools.wraps(function)
    def wrapper(*args, progress: Callback | None = None, **kwargs):
        with reporting(progress):
            return function(*args, **kwargs)
    return wrapper


def track(items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, reporting ``label`` and the count done to the installed callback, if any."""
    callback = _current.get()
    if callback is None:
        yield from items
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            items = list(items)
            total = len(items)
    callback(label, 0, total)
    for done, item in enumerate(items, 1):
        yield item
        callback(label, done, total)


def counter(label: str, total: int) -> Callable[[], None]:
    """For loops ``track`` does not fit: reports 0 of ``total`` now; call the result once per step done."""
    callback = _current.get()
    if callback is None:
        return lambda: None
    done = 0
    callback(label, 0, total)

    def advance() -> None:
        nonlocal done
        done += 1
        callback(label, done, total)
    return advance


class TerminalProgress:
    """A progress callback drawing ``label [#####.....] done/total`` in place on a terminal stream."""

    def __init__(self, stream=None, width: int = 28, interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width, self.interval = width, interval
        self.shown = False  # an unfinished bar is on the current line
        self.drawn_at = 0.0

    def __call__(self, label: str, done: int, total: int) -> None:
        finished = done >= total
        now = time.monotonic()
        if not finished and done and now - self.drawn_at < self.interval:
            return
        self.drawn_at = now
        filled = self.width if total <= 0 else min(self.width, self.width * done // total)
        line = f"{label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}"
        self.stream.write("\r\033[K" + line + ("\n" if finished else ""))
        self.stream.flush()
        self.shown = not finished

    def clear(self) -> None:
        """Erase an unfinished bar (before a log line is written; the next update redraws it)."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


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

    def _write(self, line: str) -> None:
        self.written_at = time.monotonic()
        self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def line_or_terminal_progress(quiet: bool, stream=None) -> Callback | None:
    """For long commands (``--budget``): a bar on a terminal, else one line per step (LineProgress); ``None``
    when ``quiet``."""
    stream = stream if stream is not None else sys.stderr
    if quiet:
        return None
    return terminal_progress(quiet, stream) or LineProgress(stream)


def terminal_progress(quiet: bool, stream=None) -> TerminalProgress | None:
    """The CLI's callback: a bar on ``stream`` (stderr) when it is a terminal and not ``quiet``, else ``None``.

    Log handlers writing to the same stream erase an unfinished bar before each message, so ``--verbose`` logs
    stay readable."""
    stream = stream if stream is not None else sys.stderr
    if quiet or not getattr(stream, "isatty", lambda: False)():
        return None
    bar = TerminalProgress(stream)

    def erase_bar(record: logging.LogRecord) -> bool:
        bar.clear()
        return True

    for handler in logging.getLogger().handlers:
        if getattr(handler, "stream", None) is stream:
            handler.addFilter(erase_bar)
    return bar


@contextlib.contextmanager
def silenced():
    """No progress inside (inner steps of a loop that reports its own progress)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)

"""Progress of long steps, reported through a callback so library code stays free of any UI.

Library code wraps its loops in ``track(items, label)``: without a callback installed (the default) it is the
plain iterable. A caller installs one with ``reporting(callback)`` (the Python API's ``progress=`` argument
does this); the callback receives ``(label, done, total)`` once before the first item and after each one.
Nothing here draws: the command line's callback (``onnxcomp/front/terminal.py``) draws bars with rich, only
when stderr is a terminal and ``--quiet`` is not given, so pipes and logs see no bar noise (``--budget`` writes
whole lines there instead).
"""

from __future__ import annotations

import contextlib
import functools
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


def messages() -> Callable[[str], None]:
    """A function that sends one-line messages (a time estimate, a step's outcome) to the callback installed now,
    if it shows messages (has a ``note(message)`` method, as the command line's do); usable from other threads."""
    callback = _current.get()
    note = getattr(callback, "note", None)
    return note if callable(note) else (lambda message: None)


@contextlib.contextmanager
def silenced():
    """No progress inside (inner steps of a loop that reports its own progress)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)

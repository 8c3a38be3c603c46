"""Independent per-weight work on every core, results in input order (so outputs stay deterministic).

The heavy steps (numpy sorts, the compiled loops of onnxcomp._native, file reads) release the GIL, so
threads share one process's memory and run them in parallel. At most ``workers`` items are in flight, which
bounds memory to that many weights' working sets.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """``ONNXCOMP_THREADS`` if set, else the cores this process may run on."""
    setting = os.environ.get("ONNXCOMP_THREADS", "").strip()
    if setting:
        try:
            return max(1, int(setting))
        except ValueError:
            pass
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


THREAD_PREFIX = "onnxcomp"  # the name of every worker thread of this module's pools starts with it


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that, when its block ends normally, waits for its work; when it ends by an exception (an
    error, SIGTERM's SystemExit, Ctrl-C, a consumer that stops reading) it cancels the items not started and
    returns at once, so the caller's cleanup (staging folders) runs now rather than after every running item (a
    whole weight's sensitivity curve) finishes. The items still running are abandoned: front/cli.py's entry point
    ends the process without waiting for them (``abandoned_work``)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=THREAD_PREFIX)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def abandoned_work() -> bool:
    """True when a worker thread of this module's pools is still running (its pool was left by an exception)."""
    return any(t.name.startswith(THREAD_PREFIX) and t.is_alive() for t in threading.enumerate()
               if t is not threading.current_thread())


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """Yield ``function(item)`` for every item, in the items' order, computing up to ``workers`` at once."""
    items = list(items)
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    with _pool(workers) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def completed_map(function: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[tuple[T, R]]:
    """Yield ``(item, function(item))`` for every item in the order they finish, computing up to ``workers`` at
    once and starting the next item as soon as any one finishes (ordered_map waits for the oldest, so a long item
    idles the other workers; here results are not held back). Give the items costliest first for the shortest
    total time (longest-processing-time-first scheduling). When ``function`` raises on an item, no further item
    starts, the items still running finish and their results are yielded (a caller that saves each result keeps
    them), then the first exception is raised."""
    items = list(items)
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield item, function(item)
        return
    with _pool(workers) as pool:
        waiting, running, failure = deque(enumerate(items)), {}, None
        while running or (waiting and failure is None):
            while waiting and failure is None and len(running) < workers:
                position, item = waiting.popleft()
                running[pool.submit(function, item)] = position, item
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: running[f][0]):  # those done at once in the items' order
                _, item = running.pop(future)
                if future.exception() is not None:
                    failure = failure or future.exception()
                else:
                    yield item, future.result()
        if failure is not None:
            raise failure


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library, or none found)."""
    try:
        import ctypes
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return function


def release_free_memory() -> None:
    """Give the heap memory freed so far back to the operating system (glibc's malloc_trim(0); nothing on other C
    libraries). Worker threads free per-weight arrays into their own malloc arenas, which keep them resident
    (glibc serves arrays below its mmap threshold from the heap, and that threshold rises to 32 MiB once a larger
    array is freed): without this, a compression round's freed arrays stay under the next step's peak RSS."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)

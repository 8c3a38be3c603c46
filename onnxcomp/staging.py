"""Temporary files and folders beside an output, and their removal after a run that was killed.

compress and decompress write every output into a temporary name in the output's own folder and rename it only
when complete (a rename within one file system is atomic). An error, Ctrl-C or SIGTERM removes those temporaries
as the stack unwinds; SIGKILL (the kernel's out-of-memory killer, ``kill -9``, a CI time-out) cannot, and a large
model's staging folder can hold gigabytes.

So each process names its temporaries ``.onnxcomp-<owner>-...`` after an owner token of its own, and holds an
exclusive ``flock`` on ``.onnxcomp-<owner>.lock`` in that folder while it lives. The kernel releases the lock
when the process ends, however it ends. The first time a process writes into a folder it removes the
temporaries of owners whose lock it can take (their process is gone) and whose lock file is at least
``GRACE_SECONDS`` old. Files set aside while a previous output is being replaced (``.aside``: the user's previous
sidecar or data file, which a killed run may have left there) are never removed; nor is anything not named by
this scheme. Where ``fcntl`` is missing (Windows), nothing is locked and nothing is removed.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger("onnxcomp")

PREFIX = ".onnxcomp-"
ASIDE = ".aside"  # suffix of a previous output's file set aside during a replacement: never removed here
GRACE_SECONDS = 60.0  # a lock file younger than this is left alone (its owner may be between creating and locking it)
_ENTRY = re.compile(r"\.onnxcomp-([0-9a-f]{16})(\.lock|-.*)$")

_lock = threading.Lock()
T = TypeVar("T")
_owner: tuple[int, str] | None = None  # (pid, token): a forked child takes a token of its own
_held: dict[str, list[int]] = {}  # folder -> [descriptor of this process's locked file there (-1: none), holders]


def owned_prefix(folder: str) -> str:
    """The name prefix (``.onnxcomp-<owner>-``) for this process's temporaries in ``folder`` (an existing folder).
    Inside ``writing_into(folder)`` (the functions that write an output are decorated with ``writes_output``) the
    lock is held already; called outside, it takes the lock for the rest of the process's life."""
    folder = os.path.abspath(folder)
    with _lock:
        token = _token()
        if folder not in _held:
            _acquire(folder, token)
    return f"{PREFIX}{token}-"


@contextlib.contextmanager
def writing_into(folder: str) -> Iterator[None]:
    """Hold this process's lock in ``folder`` for the block (re-entrant, thread-safe): the first holder removes
    what killed runs left there (``remove_stale``) and creates and locks ``.onnxcomp-<owner>.lock``; the last one
    out removes the lock file and releases the lock."""
    folder = os.path.abspath(folder)
    with _lock:
        _acquire(folder, _token())
    try:
        yield
    finally:
        with _lock:
            held = _held.get(folder)
            if held is not None:
                held[1] -= 1
                if held[1] == 0:
                    _unlock(folder, held[0])


def writes_output(function: Callable[..., T]) -> Callable[..., T]:
    """Decorate a function whose ``output_path`` argument names an output it writes: the call runs inside
    ``writing_into`` the output's folder (when that folder exists)."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        output_path = signature.bind_partial(*args, **kwargs).arguments.get("output_path")
        folder = os.path.dirname(os.path.abspath(os.fspath(output_path))) if output_path is not None else None
        if folder is None or not os.path.isdir(folder):
            return function(*args, **kwargs)
        with writing_into(folder):
            return function(*args, **kwargs)
    return wrapper


def _token() -> str:
    """This process's owner token (a forked child takes its own; the parent's descriptors do not hold its locks)."""
    global _owner
    if _owner is None or _owner[0] != os.getpid():
        _owner = (os.getpid(), secrets.token_hex(8))
        _held.clear()
    return _owner[1]


def _acquire(folder: str, token: str) -> None:
    """Count one more holder of ``folder``'s lock; the first removes stale temporaries and takes the lock."""
    held = _held.get(folder)
    if held is not None:
        held[1] += 1
        return
    fd = -1
    if fcntl is not None:
        remove_stale(folder)
        try:
            fd = os.open(os.path.join(folder, f"{PREFIX}{token}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a folder we cannot create a file in: the write itself will say so
            if fd >= 0:
                os.close(fd)
            fd = -1
    _held[folder] = [fd, 1]


def _unlock(folder: str, fd: int) -> None:
    """Remove this process's lock file in ``folder`` (its temporaries are gone by now) and release the lock."""
    del _held[folder]
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, f"{PREFIX}{_owner[1]}.lock"))
        os.close(fd)


def staging_folder(output_path: str) -> str:
    """A new, empty folder (mode 0700) beside ``output_path``, named with this process's ``owned_prefix``."""
    folder = os.path.dirname(os.path.abspath(output_path))
    return tempfile.mkdtemp(prefix=owned_prefix(folder), dir=folder)


def temporary_file(folder: str, aside: bool = False) -> str:
    """A new, empty, closed file in ``folder`` named with this process's ``owned_prefix``: ending ``.tmp``, or with
    ``aside`` ``.aside`` (a previous output's file set aside while it is replaced, which remove_stale never removes).
    Its mode is 0666 less the umask (mkstemp's 0600 would surprise users sharing the output)."""
    handle, path = tempfile.mkstemp(prefix=owned_prefix(folder), suffix=ASIDE if aside else ".tmp", dir=folder)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path


def remove_stale(folder: str) -> list[str]:
    """Remove the temporaries (folders and ``.tmp`` files) in ``folder`` left by onnxcomp processes that are gone:
    those of an owner whose lock this process can take and whose lock file is at least GRACE_SECONDS old, and the
    lock file itself. Returns the removed names; logs one line when there were any. Never raises for an entry it
    cannot read or remove (it is left as it is)."""
    if fcntl is None:
        return []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    entries: dict[str, list[str]] = {}
    for name in names:
        found = _ENTRY.match(name)
        if found and found.group(2) != ".lock" and not name.endswith(ASIDE):
            entries.setdefault(found.group(1), []).append(name)
    removed: list[str] = []
    freed = 0
    for token, owned in sorted(entries.items()):
        lock_path = os.path.join(folder, f"{PREFIX}{token}.lock")
        if not _owner_gone(lock_path):
            continue
        for name in sorted(owned):
            path = os.path.join(folder, name)
            size = _size(path)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    pass
            if not os.path.lexists(path):
                removed.append(name)
                freed += size
        try:
            os.remove(lock_path)
        except OSError:
            pass
    if removed:
        log.warning("removed %d temporary file(s) or folder(s), %.1f MB, left in %s by an onnxcomp run that was killed",
                 len(removed), freed / 1e6, folder)
    return removed


def _owner_gone(lock_path: str) -> bool:
    """True when the process that owned ``lock_path`` has ended: the lock file is at least GRACE_SECONDS old and its
    lock is free. A missing lock file says nothing about its owner: its temporaries are left alone."""
    try:
        if time.time() - os.stat(lock_path).st_mtime < GRACE_SECONDS:
            return False
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return False  # no lock file: nothing says its owner is gone
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # locked: its owner is alive (or is this process, through another descriptor)
    finally:
        os.close(fd)
    return True


def _size(path: str) -> int:
    """Bytes under ``path`` (a file, or a folder walked without following links); 0 where unreadable."""
    if not os.path.isdir(path) or os.path.islink(path):
        try:
            return os.lstat(path).st_size
        except OSError:
            return 0
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


@atexit.register
def _release() -> None:
    """At exit, release what ``owned_prefix`` took for the rest of the process's life."""
    if _owner is None or _owner[0] != os.getpid():
        return
    for folder, (fd, _) in list(_held.items()):
        _unlock(folder, fd)

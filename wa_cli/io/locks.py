"""Locks on temporaries: a live writer's temporary is never taken for a stale one.

A writer creates its temporary already locked (``flock``, exclusive) and holds the lock until
the output is committed or removed; another run may remove a temporary only when no process of
its PID is alive in its PID namespace *and* it can take the lock (docs/safety.md).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from wa_cli.io.renames import remove_path

try:
    import fcntl
except ImportError:  # not POSIX: the PID rule alone
    fcntl = None  # type: ignore[assignment]

TMP = ".wa-tmp-"
NEW = ".wa-new-"  # a temporary before it is locked (never taken for a stale one)


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_locked(tmp: Path, folder: bool) -> int | None:
    """Create ``tmp`` (a folder with ``folder``) already locked; the descriptor holds the lock.

    Created under another name and renamed once locked, so no process ever sees a ``.wa-tmp-``
    name without its lock held. None where ``flock`` does not exist (the PID rule alone).
    """
    if fcntl is None:
        return None
    new = tmp.with_name(tmp.name.replace(TMP, NEW, 1))
    if folder:
        os.mkdir(new)
        fd = os.open(new, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    else:
        fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(new, tmp)
    except BaseException:
        os.close(fd)
        remove_path(new)
        raise
    return fd


def lock_held(path: str | os.PathLike[str], unknown: bool = False) -> bool:
    """Whether another open file holds ``path``'s lock (a live writer, in any PID namespace).

    ``unknown``: the answer when it cannot be told (no ``fcntl``, the file cannot be opened).
    """
    if fcntl is None:
        return unknown
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return unknown
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the lock taken just now
    return False


def release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)

"""Inputs opened once, as regular files, and read with reads that must return every byte.

A path names a file only at the moment it is opened: a file truncated, or replaced by a FIFO,
between the header read and the data read would otherwise give short reads (taken for the end of
the data) or an ``open`` that waits for a FIFO's writer for ever. So an input is opened once
with ``O_NONBLOCK`` (opening a FIFO then returns at once), checked with ``fstat`` on that
descriptor, and read through it; every read asks for an exact byte count and a shorter answer is
an error that says the file changed (README/docs "Nothing lost").
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from wa_cli.errors import ExitCode, WaError


def special_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words (a FIFO, a device, ...)."""
    kinds = [
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "folder"),
    ]
    return next((name for test, name in kinds if test(mode)), "special file")


_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: str | os.PathLike[str], what: str = "input") -> tuple[int, os.stat_result]:
    """A read-only descriptor on ``path`` and its ``fstat``, if ``path`` is a regular file.

    Never blocks: a FIFO is opened non-blocking and refused before anything reads it.

    Raises:
        WaError: (BAD_INPUT) ``path`` is missing, unreadable, or not a regular file.
    """
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise WaError(f"{what} '{path}' does not exist", ExitCode.BAD_INPUT) from None
    except OSError as e:
        raise WaError(f"cannot read {what} '{path}': {e.strerror or e}", ExitCode.BAD_INPUT) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "folder" if stat.S_ISDIR(st.st_mode) else special_kind(st.st_mode)
            raise WaError(
                f"{what} '{path}' is a {kind}, not a regular file (wa reads files and checkpoint "
                "folders only)",
                ExitCode.BAD_INPUT,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def changed(path: str | os.PathLike[str], how: str) -> WaError:
    """The one-line error for an input that changed while wa read it (exit 3)."""
    return WaError(
        f"'{path}' changed while wa ran ({how}); nothing was written, run again once it is "
        "complete",
        ExitCode.BAD_INPUT,
    )


def pread_exact(fd: int, n: int, offset: int, path: str | os.PathLike[str]) -> bytes:
    """Exactly ``n`` bytes at ``offset``; a shorter file is an input that changed."""
    parts = []
    got = 0
    while got < n:
        try:
            chunk = os.pread(fd, n - got, offset + got)
        except OSError as e:
            raise WaError(f"cannot read '{path}': {e.strerror or e}", ExitCode.BAD_INPUT) from e
        if not chunk:
            raise changed(path, f"it ended at byte {offset + got}, {n - got} bytes short")
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two stats are of one unchanged file (device, inode, size, modification time)."""
    return identity(a) == identity(b)


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What a file that was not replaced or rewritten keeps: device, inode, size, mtime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def reopen(path: Path, expected: tuple[int, ...] | None) -> int:
    """Open ``path`` again (a descriptor closed to stay under the open-file limit) and check
    that it is still the same regular file; never blocks on a FIFO swapped in meanwhile."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError as e:
        raise changed(path, f"it cannot be opened again: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise changed(path, f"it is now a {special_kind(st.st_mode)}")
        if expected is not None and identity(st) != expected:
            raise changed(path, "replaced or rewritten: its size, time or inode differ")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_unchanged(path: str | os.PathLike[str], fd: int) -> None:
    """``path`` still names the file open at ``fd`` (a library that opened it by path read the
    same file wa holds)."""
    try:
        now = os.stat(path)
    except OSError as e:
        raise changed(path, f"it is gone: {e.strerror or e}") from e
    if not same_file(now, os.fstat(fd)):
        raise changed(path, "replaced or rewritten: its size, time or inode differ")

"""Renames that do one thing or nothing (``renameat2``), and removal of a file or a folder.

``exchange`` swaps two existing paths in one step and ``rename_noreplace`` fails when the
destination exists (two runs cannot both create it); both return or fall back where the kernel
or filesystem lacks them. Shared by the atomic commit (:mod:`wa_cli.io.atomic`) and the recovery
of an interrupted commit (:mod:`wa_cli.io.journal`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
from pathlib import Path

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc: ctypes.CDLL | None = None


def renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False when the kernel, libc or filesystem lacks it."""
    global _libc
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    a, b = os.fsencode(src), os.fsencode(dst)
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        rc = fn(_AT_FDCWD, a, _AT_FDCWD, b, ctypes.c_uint(flags))
    else:  # glibc before 2.28: the raw system call
        number = {"x86_64": 316, "aarch64": 276}.get(os.uname().machine)
        if number is None:
            return False
        rc = _libc.syscall(number, _AT_FDCWD, a, _AT_FDCWD, b, ctypes.c_uint(flags))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where unsupported (the caller falls back)."""
    return renameat2(a, b, _RENAME_EXCHANGE)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename, failing with EEXIST if ``dst`` exists (two runs cannot both create it)."""
    if renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if src.is_dir():
        os.rename(src, dst)  # POSIX refuses a non-empty folder; an empty one is no output
        return
    os.link(src, dst)  # fails with EEXIST
    os.unlink(src)


def remove_path(path: Path) -> None:
    """Remove a file, a link, or a folder with everything in it; nothing if it is gone."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()

"""Atomic replacement of a file or a folder: write a temporary sibling, then swap it into place.

Guarantees (docs/safety.md, "Nothing lost"):

* The destination holds, at every instant, either the previous output or the complete new one.
  A file is renamed over the old one. A folder is swapped with the old one in one call
  (``renameat2(RENAME_EXCHANGE)``, Linux 3.15+); the old copy then sits at the temporary name and
  is removed. Where the kernel or filesystem lacks the exchange, the old folder is renamed aside
  and the new one renamed in, with SIGINT/SIGTERM/SIGHUP blocked between the two renames (only a
  crash or SIGKILL there leaves the old folder at its ``.wa-tmp`` name).
* Without ``--force`` the destination is created exclusively (``RENAME_NOREPLACE``, or a hard link
  for files), so two runs writing one path cannot both succeed.
* Temporary names are ``.NAME.wa-tmp-PID-XXXX`` (cut to fit NAME_MAX). The writing process
  holds an exclusive ``flock`` on its temporary from before the name exists (it is created under
  a ``.wa-new-`` name, locked, then renamed) until it is committed or removed. A run writing a
  destination first removes the stale temporaries: those whose process is not alive in its PID
  namespace *and* whose lock it can take (left by a SIGKILL or a power cut), and says so once.
  A run in another PID namespace (a container sharing the folder) holds its lock, so its live
  temporary is never taken for stale.
* ``transaction()`` commits several outputs together (graft's N outputs): all are written to
  temporaries first, and a failure before the commit leaves none of them. The commit itself is
  journaled (:mod:`wa_cli.io.journal`): a crash during it is finished by the next run.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wa_cli.errors import ExitCode, WaError
from wa_cli.io import journal
from wa_cli.io.guard import PLOT, SAFETENSORS, Reads
from wa_cli.io.guard import check_destination as _guard_check
from wa_cli.io.held_signals import signals_blocked
from wa_cli.io.locks import TMP
from wa_cli.io.locks import alive as _alive
from wa_cli.io.locks import create_locked as _create_locked
from wa_cli.io.locks import lock_held as _lock_held
from wa_cli.io.locks import release as _release
from wa_cli.io.renames import exchange as _exchange
from wa_cli.io.renames import remove_path
from wa_cli.io.renames import rename_noreplace as _rename_noreplace

logger = logging.getLogger("wa_cli")

__all__ = ["PLOT", "SAFETENSORS", "atomic_destination", "check_destination", "transaction"]

_TMP = TMP
_TMP_RE = re.compile(r"\.wa-tmp-(\d+)-[0-9a-f]+$")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _stem(destination: Path) -> str:
    """``.NAME`` for the temporaries of ``destination``, shortened (with a hash) past NAME_MAX."""
    name = destination.name
    room = _name_max(destination.parent if str(destination.parent) else Path(".")) - 40
    raw = os.fsencode(name)  # the bytes on disk: a name need not be UTF-8
    if len(raw) <= room:
        return f".{name}"
    digest = hashlib.sha1(raw).hexdigest()[:8]
    short = os.fsdecode(raw[: room - 9])
    return f".{short}~{digest}"


def temporary_sibling(destination: Path) -> Path:
    """A hidden path next to ``destination`` (same filesystem) naming this process."""
    return destination.with_name(f"{_stem(destination)}{_TMP}{os.getpid()}-{secrets.token_hex(4)}")


# Temporaries of this process not yet committed or removed (a hard exit removes them).
_live: set[Path] = set()


def remove_live() -> None:
    """Remove every temporary in progress (the last resort of a process ending on a signal)."""
    for path in list(_live):
        with contextlib.suppress(OSError):
            _remove(path)
        _live.discard(path)


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale(destination: Path) -> list[Path]:
    """Remove temporaries of ``destination`` whose process is gone; say so in one line.

    Gone means both: no process of that PID in this namespace, and nobody holds the lock.
    """
    parent = destination.parent if str(destination.parent) else Path(".")
    journal.finish_interrupted(parent)  # first: its temporaries are the outputs it commits
    stem = _stem(destination) + _TMP
    removed = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(stem)]
    except OSError:
        return []
    for entry in entries:
        m = _TMP_RE.search(entry.name)
        if m and entry.name[: m.start()] + _TMP == stem and not _alive(int(m.group(1))):
            if _lock_held(entry.path):
                continue
            with contextlib.suppress(OSError):
                _remove(Path(entry.path))
                removed.append(Path(entry.path))
    if removed:
        logger.warning(
            "removed %d temporary file(s) left by an interrupted run next to '%s'",
            len(removed),
            destination,
        )
    return removed


def check_destination(
    destination: Path,
    force: bool,
    *,
    folder: bool = False,
    reads: Reads = (),
    kind: str = SAFETENSORS,
) -> None:
    """The guard (``wa_cli.io.guard``): every writer checks its destination through this."""
    _guard_check(destination, force, folder=folder, reads=reads, kind=kind)


# commit --------------------------------------------------------------------------------------


@dataclass
class _Pending:
    tmp: Path
    destination: Path
    force: bool
    old: Path | None = None  # where the previous output went, until removed
    done: bool = False
    lock: int | None = None  # the descriptor holding the temporary's lock until the end


@dataclass
class _Transaction:
    pending: list[_Pending] = field(default_factory=list)


_transaction: contextvars.ContextVar[_Transaction | None] = contextvars.ContextVar(
    "wa_transaction", default=None
)
# Destinations committed by this process (the interrupt message says what was written).
committed: list[Path] = []


def written_note(since: int = 0) -> str:
    """What an interrupt leaves on disk: the outputs committed (after ``committed[since]``)."""
    written = committed[since:]
    if not written:
        return "nothing was written"
    return f"after writing {', '.join(repr(str(p)) for p in written)}"


def _commit(p: _Pending) -> None:
    """Put ``p.tmp`` at ``p.destination``; the previous output (if any) ends at ``p.old``."""
    dest = p.destination
    if not p.force:
        try:
            _rename_noreplace(p.tmp, dest)
        except FileExistsError as e:
            raise FileExistsError(e.errno, "it appeared while wa was writing", str(dest)) from e
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(
                    errno.EEXIST, "it appeared while wa was writing", str(dest)
                ) from e
            raise
    elif not os.path.lexists(dest):
        os.rename(p.tmp, dest)
    elif _exchange(p.tmp, dest):
        p.old = p.tmp  # the old output now sits at the temporary name
    elif p.tmp.is_dir() or dest.is_dir():
        aside = temporary_sibling(dest)
        os.rename(dest, aside)
        try:
            os.rename(p.tmp, dest)
        except BaseException:
            os.rename(aside, dest)
            raise
        p.old = aside
    else:
        aside = temporary_sibling(dest)  # a hard link keeps the old file for a rollback
        try:
            os.link(dest, aside)
            p.old = aside
        except OSError:
            pass
        os.replace(p.tmp, dest)
    p.done = True


def _rollback(p: _Pending) -> None:
    """Undo the commit of one output of a transaction whose later commit failed."""
    if not p.done:
        return
    if p.old is None:
        _remove(p.destination)  # there was no previous output
    elif p.old.is_dir() and _exchange(p.old, p.destination):
        _remove(p.old)  # the new output, swapped back to the temporary name
    elif p.old.is_dir():
        _remove(p.destination)
        os.rename(p.old, p.destination)
    elif not _exchange(p.old, p.destination):
        os.replace(p.old, p.destination)
    else:
        _remove(p.old)


def _finish(pending: list[_Pending]) -> None:
    """Commit every output with signals held, then remove the previous copies.

    A signal that arrives meanwhile is delivered when the block ends, so it cannot land
    between two renames or leave a half-removed old copy; the outputs are complete by then.
    """
    with signals_blocked():
        done: list[_Pending] = []
        # Several outputs: a journal lets the next run finish a commit that a crash cut short.
        started = (
            journal.begin([(p.tmp, p.destination) for p in pending]) if len(pending) > 1 else None
        )
        try:
            for p in pending:
                try:
                    _commit(p)
                except OSError as e:
                    raise WaError(
                        f"cannot write '{p.destination}': {e.strerror or e}", ExitCode.OUTPUT
                    ) from e
                done.append(p)
        except BaseException:
            for p in reversed(done):
                with contextlib.suppress(OSError):
                    _rollback(p)
            journal.end(started)
            raise
        for p in pending:
            parent = p.destination.parent if str(p.destination.parent) else Path(".")
            with contextlib.suppress(OSError):
                fsync_path(parent)
            committed.append(p.destination)
        for p in pending:
            if p.old is not None:
                try:
                    _remove(p.old)
                except BaseException:
                    with contextlib.suppress(OSError):
                        _remove(p.old)  # retry once; a stale copy is removed by the next run
                    raise
        journal.end(started)


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """Commit every ``atomic_destination`` inside the block together, when the block ends."""
    t = _Transaction()
    token = _transaction.set(t)
    try:
        try:
            yield
        finally:
            _transaction.reset(token)
        _finish(t.pending)
    except BaseException:
        for p in t.pending:
            if not p.done:
                _remove(p.tmp)
        raise
    finally:
        for p in t.pending:
            _release(p.lock)


@contextlib.contextmanager
def atomic_destination(
    destination: str | os.PathLike[str],
    force: bool = False,
    *,
    folder: bool = False,
    reads: Reads = (),
    kind: str = SAFETENSORS,
) -> Iterator[Path]:
    """Yield a temporary path to fill; on success it replaces ``destination`` atomically.

    The destination is checked by the guard first (``folder``: the output is a shard folder;
    ``reads``: files the caller reads; ``kind``: ``SAFETENSORS`` or ``PLOT``, what ``force`` may
    replace). The temporary may be made a file or a folder by the
    caller. On any exception (KeyboardInterrupt included) it is removed and ``destination`` is
    left as it was. Inside ``transaction()`` the commit waits for the end of the block.

    Example:
        >>> with atomic_destination("out.safetensors", force=True) as tmp:  # doctest: +SKIP
        ...     tmp.write_bytes(b"...")
    """
    destination = Path(destination)
    check_destination(destination, force, folder=folder, reads=reads, kind=kind)
    remove_stale(destination)
    tmp = temporary_sibling(destination)
    try:
        lock = _create_locked(tmp, folder)
    except OSError as e:
        raise WaError(f"cannot write '{destination}': {e.strerror or e}", ExitCode.OUTPUT) from e
    _live.add(tmp)
    pending = _Pending(tmp, destination, force, lock=lock)
    try:
        yield tmp
        if tmp.is_dir():
            for child in tmp.iterdir():
                fsync_path(child)
        fsync_path(tmp)
    except BaseException:
        _remove(tmp)
        _release(lock)
        raise
    t = _transaction.get()
    if t is not None:
        t.pending.append(pending)
        return
    try:
        _finish([pending])
    except BaseException:
        if not pending.done:
            _remove(tmp)
        raise
    finally:
        _release(lock)


def _remove(path: Path) -> None:
    _live.discard(path)
    remove_path(path)

"""A commit journal for outputs committed together (``wa graft``'s ring): a crash is finished.

Before the renames of a set begin, the committing process writes ``.wa-commit-PID-XXXX.json``
next to the first output: each output's temporary, destination, and the identity (device,
inode) of the complete new output, fsynced, and locked (``flock``) for as long as the commit
runs. After the last rename and the removal of the previous copies, the journal is removed.

A SIGKILL, a crash or a power cut in between leaves the journal, unlocked. The next run that
writes next to it (:func:`wa_cli.io.atomic.remove_stale`) finishes the commit before anything
else: every output whose destination is not yet the new one is renamed (or exchanged) into
place from its temporary, every previous copy left at a temporary name is removed, and the
journal goes. The new outputs were complete and fsynced before the journal was written, so
finishing is always possible; the identities tell a new output from a previous copy at the same
temporary name (an exchange leaves the previous one there).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from wa_cli.io.locks import alive, lock_held
from wa_cli.io.renames import exchange, remove_path

try:
    import fcntl
except ImportError:  # not POSIX: no journal (the set's commit is then documented as a mix)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("wa_cli")

_PREFIX = ".wa-commit-"
_NAME = re.compile(r"^\.wa-commit-(\d+)-[0-9a-f]+\.json$")


def begin(outputs: Sequence[tuple[Path, Path]]) -> tuple[Path, int] | None:
    """Write and lock the journal of ``(temporary, destination)`` pairs about to be committed.

    Returns the journal and the descriptor holding its lock (for :func:`end`); None where
    ``flock`` does not exist.
    """
    if fcntl is None or not outputs:
        return None
    folder = _folder(outputs[0][1])
    entries = []
    for tmp, destination in outputs:
        st = os.lstat(tmp)
        entries.append(
            {"tmp": str(tmp), "destination": str(destination), "id": [st.st_dev, st.st_ino]}
        )
    name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    staging, journal = folder / f"{name}.new", folder / f"{name}.json"
    fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"outputs": entries}).encode())
        os.fsync(fd)
        os.rename(staging, journal)  # only a locked, complete journal has the .json name
        _fsync_folder(folder)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
    return journal, fd


def end(started: tuple[Path, int] | None) -> None:
    """The commit is complete (or rolled back): remove the journal and release its lock."""
    if started is None:
        return
    journal, fd = started
    with contextlib.suppress(OSError):
        os.unlink(journal)
    with contextlib.suppress(OSError):
        os.close(fd)


def finish_interrupted(folder: Path) -> int:
    """Finish the commits that a dead process left journaled in ``folder``; how many."""
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(_PREFIX)]
    except OSError:
        return 0
    finished = 0
    for name in names:
        m = _NAME.match(name)
        if m is None or alive(int(m.group(1))) or lock_held(folder / name, unknown=True):
            continue
        try:
            outputs = json.loads((folder / name).read_bytes())["outputs"]
            for entry in outputs:
                _finish_one(Path(entry["tmp"]), Path(entry["destination"]), tuple(entry["id"]))
            for entry in outputs:  # previous copies left at temporary names
                remove_path(Path(entry["tmp"]))
            _fsync_folder(folder)
            os.unlink(folder / name)
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("could not finish the interrupted commit '%s': %s", folder / name, e)
            continue
        finished += 1
        logger.warning(
            "finished the commit of %d output(s) that an interrupted run left in '%s'",
            len(outputs),
            folder,
        )
    return finished


def _finish_one(tmp: Path, destination: Path, new: tuple[int, ...]) -> None:
    """Put the new output (identified by ``new``) at ``destination`` if it is not there yet."""
    if _identity(destination) == new or _identity(tmp) != new:
        return  # committed already (or nothing of this run is left to commit)
    if not os.path.lexists(destination):
        os.rename(tmp, destination)
    elif not exchange(tmp, destination):  # the previous output goes to the temporary name
        if tmp.is_dir():
            aside = tmp.with_name(tmp.name + "-previous")
            os.rename(destination, aside)
            os.rename(tmp, destination)
            remove_path(aside)
        else:
            os.replace(tmp, destination)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _folder(destination: Path) -> Path:
    return destination.parent if str(destination.parent) else Path(".")


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""Atomic replacement of a file or a folder: write a temporary sibling, then rename it into place.

A crash, an error or Ctrl-C at any point leaves either the previous destination or the complete new
one, never a partial file, and removes the temporary (timm's checkpoint saver does the same with
``os.replace``; mergekit writes in place and leaves half-written shards behind).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from wa_cli.errors import ExitCode, WaError, listing

# What a folder written by wa holds (shards and their index): the only folder --force replaces.
_SHARD_FOLDER_SUFFIXES = (".safetensors", ".index.json")


def temporary_sibling(destination: Path) -> Path:
    """A hidden path next to ``destination`` (same filesystem, so the final rename is atomic)."""
    return destination.with_name(f".{destination.name}.wa-tmp-{uuid.uuid4().hex[:8]}")


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_destination(destination: Path, force: bool) -> None:
    """Refuse an existing destination without ``force``, and a missing or read-only folder.

    Even with ``force``, an existing folder is replaced only if it holds nothing but
    ``*.safetensors`` and ``*.index.json`` files (a sharded checkpoint): replacing a folder
    deletes everything in it, and ``-o models --force`` must not delete a user's other files.
    """
    if destination.exists() and not force:
        raise WaError(
            f"output '{destination}' already exists (pass --force to replace it)", ExitCode.OUTPUT
        )
    if destination.is_dir():
        try:
            others = sorted(
                child.name
                for child in destination.iterdir()
                if not (child.is_file() and child.name.endswith(_SHARD_FOLDER_SUFFIXES))
            )
        except OSError as e:
            raise WaError(
                f"cannot replace output folder '{destination}': {e.strerror or e}", ExitCode.OUTPUT
            ) from e
        if others:
            raise WaError(
                f"output folder '{destination}' holds other files than shards "
                f"({listing(others)}); wa replaces a folder only if it holds just *.safetensors "
                "and *.index.json files, even with --force (pick a new or empty folder)",
                ExitCode.OUTPUT,
            )
    parent = destination.parent if str(destination.parent) else Path(".")
    if not parent.is_dir():
        raise WaError(
            f"cannot write '{destination}': folder '{parent}' does not exist", ExitCode.OUTPUT
        )
    if not os.access(parent, os.W_OK):
        raise WaError(
            f"cannot write '{destination}': folder '{parent}' is not writable", ExitCode.OUTPUT
        )


@contextlib.contextmanager
def atomic_destination(destination: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary path to fill; on success it replaces ``destination`` atomically.

    The temporary may be made a file or a folder by the caller. On any exception (KeyboardInterrupt
    included) it is removed and ``destination`` is left as it was.

    Example:
        >>> with atomic_destination("out.safetensors", force=True) as tmp:  # doctest: +SKIP
        ...     tmp.write_bytes(b"...")
    """
    destination = Path(destination)
    check_destination(destination, force)
    tmp = temporary_sibling(destination)
    try:
        yield tmp
        if tmp.is_dir():
            for child in tmp.iterdir():
                fsync_path(child)
        fsync_path(tmp)
        _replace(tmp, destination)
        fsync_path(destination.parent if str(destination.parent) else Path("."))
    except BaseException:
        _remove(tmp)
        raise


def _replace(tmp: Path, destination: Path) -> None:
    if tmp.is_dir() and destination.exists():
        # A folder cannot be renamed over a non-empty folder: move the old one aside first, so
        # the destination is never missing for longer than two renames.
        aside = temporary_sibling(destination)
        os.replace(destination, aside)
        try:
            os.replace(tmp, destination)
        except BaseException:
            os.replace(aside, destination)
            raise
        _remove(aside)
    elif destination.is_dir():
        shutil.rmtree(destination)
        os.replace(tmp, destination)
    else:
        os.replace(tmp, destination)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()

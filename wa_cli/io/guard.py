"""The one check every writer runs on its destination before it creates anything.

A command names files it reads (checkpoints, their shards and indexes, ``--model``, ``--data``,
``--metrics``) and one or more files it writes. ``check_destination`` refuses, even with
``--force``:

* a destination that is, or links to, a file the command reads (compared by resolved path and by
  device and inode, so symlinks and hard links count), a folder holding one, or a path inside an
  input's shard folder (a new file there changes what that folder holds);
* anything that is neither a regular file nor a folder wa wrote: device nodes (``/dev/null``),
  FIFOs, sockets, a folder of someone else's shards;
* a symbolic link, dangling or not (``-o /dev/stdout`` would replace the link itself);
* a file that is not of the kind wa writes there: only a safetensors file (or, for plots, a
  PNG, PDF, SVG or PostScript file) is replaced, recognised by its first bytes, so
  ``-o train.py --force`` never replaces a script (an empty file holds nothing and may go).

Readers record what they open with ``note_read`` while a ``session`` is active (the CLI opens one
per command), so a writer also knows files it was not told about.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from wa_cli.errors import ExitCode, WaError, listing

# The files a wa shard folder holds; its index's metadata names the wa version that wrote it.
SHARD_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".index.json"
WA_MARK = "wa_version"
# The index entry listing the files wa copied beside its shards (``--copy-config``), as JSON.
COMPANIONS_KEY = "wa_companions"
_MAX_INDEX_BYTES = 64 << 20
# What wa writes at a destination, and how it recognises an earlier one (the first bytes).
SAFETENSORS = "safetensors"
PLOT = "plot"
_KIND_NAMES = {SAFETENSORS: "a safetensors file", PLOT: "a plot (PNG, PDF, SVG or PostScript)"}
_PLOT_MAGIC = (b"\x89PNG\r\n\x1a\n", b"%PDF-", b"%!PS")


@dataclass(frozen=True)
class ReadPath:
    """A file (or a shard folder) a command reads."""

    path: Path  # resolved
    ident: tuple[int, int] | None  # (st_dev, st_ino) when it exists
    folder: bool = False  # a shard folder: nothing may be written inside it


# What callers pass as the files they read.
Reads = Sequence["str | os.PathLike[str] | ReadPath"]

_reads: contextvars.ContextVar[list[ReadPath] | None] = contextvars.ContextVar(
    "wa_reads", default=None
)


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Record every ``note_read`` until the block ends (one CLI command)."""
    token = _reads.set([])
    try:
        yield
    finally:
        _reads.reset(token)


def describe(path: str | os.PathLike[str], *, folder: bool = False) -> ReadPath:
    """Resolve ``path`` and take its identity (device and inode) if it exists."""
    p = Path(path)
    try:
        st = os.stat(p)
        ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        ident = None
    return ReadPath(_resolve(p), ident, folder)


def note_read(path: str | os.PathLike[str], *, folder: bool = False) -> None:
    """Record that the running command reads ``path`` (a shard folder with ``folder=True``)."""
    reads = _reads.get()
    if reads is not None:
        reads.append(describe(path, folder=folder))


def note_reads(paths: Sequence[ReadPath]) -> None:
    """Record already described paths (a checkpoint's files and folder)."""
    reads = _reads.get()
    if reads is not None:
        reads.extend(paths)


def noted_reads() -> list[ReadPath]:
    return list(_reads.get() or [])


def _resolve(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare it as written
        return p.absolute()


def check_destination(
    destination: str | os.PathLike[str],
    force: bool,
    *,
    folder: bool = False,
    reads: Reads = (),
    kind: str = SAFETENSORS,
) -> None:
    """Refuse a destination that must not be written; see the module docstring.

    Args:
        destination: the file (or, with ``folder``, the shard folder) about to be written.
        force: an existing file of the kind wa writes there (or a wa shard folder) may be
            replaced.
        folder: the output is a folder of shards and an index.
        reads: files the command reads, besides those recorded by ``note_read``.
        kind: what wa writes there, ``SAFETENSORS`` or ``PLOT``: ``force`` replaces only a file
            of that kind (or an empty one).

    Raises:
        WaError: (OUTPUT) the destination is an input, not replaceable, or its folder is missing.
    """
    dest = Path(destination)
    refuse_inputs(dest, reads)
    try:
        st: os.stat_result | None = os.lstat(dest)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise WaError(f"cannot write '{dest}': {e.strerror or e}", ExitCode.OUTPUT) from e
    if st is not None and stat.S_ISLNK(st.st_mode):
        _refuse_link(dest)
    if st is not None:
        _check_existing(dest, st, force, folder, kind)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise WaError(f"cannot write '{dest}': folder '{parent}' does not exist", ExitCode.OUTPUT)
    if not os.access(parent, os.W_OK):
        raise WaError(f"cannot write '{dest}': folder '{parent}' is not writable", ExitCode.OUTPUT)


def refuse_inputs(destination: str | os.PathLike[str], reads: Reads = ()) -> None:
    """Refuse a destination that is, holds, or lies inside what the command reads."""
    dest = Path(destination)
    target = describe(dest)
    protected = [r if isinstance(r, ReadPath) else describe(r) for r in reads]
    for r in protected + noted_reads():
        same = r.path == target.path or (r.ident is not None and r.ident == target.ident)
        if same and r.folder:
            raise WaError(
                f"output '{dest}' is the input folder '{r.path}' (choose another -o)",
                ExitCode.OUTPUT,
            )
        if same:
            raise WaError(
                f"output '{dest}' would overwrite the input '{r.path}' (choose another -o)",
                ExitCode.OUTPUT,
            )
        if target.path in r.path.parents:
            raise WaError(
                f"output '{dest}' is a folder holding the input '{r.path}' (choose another -o)",
                ExitCode.OUTPUT,
            )
        if r.folder and r.path in target.path.parents:
            raise WaError(
                f"output '{dest}' is inside the input's shard folder '{r.path}' "
                "(choose another -o)",
                ExitCode.OUTPUT,
            )


def refuse_file_link(destination: str | os.PathLike[str]) -> None:
    """Refuse, before anything is read, a link (dangling, or to a file) where a file goes."""
    dest = Path(destination)
    if dest.is_symlink() and not dest.is_dir():
        _refuse_link(dest)


def _refuse_link(dest: Path) -> None:
    try:
        target = f" to '{os.readlink(dest)}'"
    except OSError:
        target = ""
    raise WaError.naming(
        "output '{dest}' is a symbolic link{target}; wa never writes through or over a link, "
        "even with {force} (name a file that is not a link, or remove the link)",
        ExitCode.OUTPUT,
        dest=str(dest),
        target=target,
    )


def _check_existing(
    dest: Path, st: os.stat_result, force: bool, folder: bool, kind: str = SAFETENSORS
) -> None:
    if stat.S_ISDIR(st.st_mode):
        if not folder:
            raise WaError.naming(
                "output '{dest}' is a folder, and wa writes a file there (give a file name; "
                "wa never replaces a folder with a file, even with {force})",
                ExitCode.OUTPUT,
                dest=str(dest),
            )
        if not force:
            _exists(dest)
        _check_wa_folder(dest)
    elif stat.S_ISREG(st.st_mode):
        found = file_kind(dest) if st.st_size else kind  # an empty file holds nothing to lose
        if found != kind:
            what = f"is {_KIND_NAMES[found]}" if found else "holds something else"
            raise WaError.naming(
                "output '{dest}' exists and {what}, not {kind}; wa replaces only "
                "{kind} there, even with {force} (choose another name)",
                ExitCode.OUTPUT,
                dest=str(dest),
                what=what,
                kind=_KIND_NAMES[kind],
            )
        if not force:
            _exists(dest)
    else:
        raise WaError.naming(
            "output '{dest}' is a {kind}, not a regular file; wa writes only "
            "regular files and its own shard folders, even with {force}",
            ExitCode.OUTPUT,
            dest=str(dest),
            kind=_kind(st.st_mode),
        )


def file_kind(path: Path) -> str | None:
    """``SAFETENSORS`` or ``PLOT`` when the file's first bytes say so, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        head = os.pread(fd, 4096, 0) if stat.S_ISREG(st.st_mode) else b""
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(head) >= 10:
        n = int.from_bytes(head[:8], "little")
        # A header length that fits the file, and JSON that opens an object.
        if 2 <= n <= st.st_size - 8 and head[8:9] == b"{":
            return SAFETENSORS
    if head.startswith(_PLOT_MAGIC):
        return PLOT
    text = head.lstrip()
    if text.startswith((b"<?xml", b"<svg", b"<!DOCTYPE svg")) and b"<svg" in head:
        return PLOT
    return None


def _exists(dest: Path) -> None:
    raise WaError.naming(
        "output '{dest}' already exists (pass {force} to replace it)",
        ExitCode.OUTPUT,
        dest=str(dest),
    )


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISSOCK, "socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "special file")


def _check_wa_folder(dest: Path) -> None:
    """A folder is replaced only if it holds just a shard folder wa wrote (or nothing).

    Besides shards and indexes, the files a wa index lists as copied beside its shards
    (``--copy-config``: config.json, tokenizer files) may be there.
    """
    try:
        children = list(os.scandir(dest))
    except OSError as e:
        raise WaError(
            f"cannot replace output folder '{dest}': {e.strerror or e}", ExitCode.OUTPUT
        ) from e
    marks = [_wa_index_metadata(Path(c.path)) for c in children]
    wa_indexes = [m for m in marks if m is not None]
    companions = {name for m in wa_indexes for name in _companions(m)}
    others = sorted(
        c.name
        for c in children
        if not c.is_file(follow_symlinks=False)
        or not (c.name.endswith((SHARD_SUFFIX, INDEX_SUFFIX)) or c.name in companions)
    )
    if others:
        raise WaError.naming(
            "output folder '{dest}' holds other files than shards ({others}); wa "
            "replaces a folder only if it holds just the *.safetensors and *.index.json files "
            "wa wrote (and the config files it copied), even with {force} (pick a new or empty "
            "folder)",
            ExitCode.OUTPUT,
            dest=str(dest),
            others=listing(others),
        )
    if children and not wa_indexes:
        raise WaError.naming(
            "output folder '{dest}' holds shards that wa did not write (its index has no "
            "'{mark}'); wa replaces only its own shard folders, even with {force} "
            "(pick a new or empty folder)",
            ExitCode.OUTPUT,
            dest=str(dest),
            mark=WA_MARK,
        )


def _wa_index_metadata(path: Path) -> dict[str, object] | None:
    """The metadata of an index wa wrote (it carries ``WA_MARK``), else None."""
    if not path.name.endswith(INDEX_SUFFIX):
        return None
    try:
        if path.stat().st_size > _MAX_INDEX_BYTES:
            return None
        meta = json.loads(path.read_bytes()).get("metadata")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return meta if isinstance(meta, dict) and WA_MARK in meta else None


def _companions(meta: dict[str, object]) -> list[str]:
    """The plain file names an index lists under ``COMPANIONS_KEY`` (nothing with a slash)."""
    raw = meta.get(COMPANIONS_KEY)
    try:
        names = json.loads(raw) if isinstance(raw, str) else []
    except (ValueError, RecursionError):
        return []
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and n and "/" not in n and n not in (".", "..")]

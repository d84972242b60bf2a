"""The lazy checkpoint every reader returns, and positional reads into the caller's buffers.

Tensor bytes are read with ``pread`` into buffers the caller owns rather than memory-mapped:
every mapped page a process touches counts in its resident memory, which is how a streaming
loop over mmapped files still reaches 9 GB (PEERS.md).
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.descriptors import changed, identity, reopen, special_kind
from wa_cli.io.guard import ReadPath, describe
from wa_cli.io.keys import strip_names
from wa_cli.io.safetensors_header import TensorInfo


class Checkpoint:
    """One checkpoint on disk, opened lazily.

    Attributes:
        path: what the user named (a file, a sharded folder, or an index file).
        name: a short display name (the file or folder name).
        metadata: string metadata (safetensors ``__metadata__``; for pickles, step/epoch and the
            top-level numbers; for run folders, the library's record such as ``global_step``).
        key_order_known: whether ``keys()`` is the state-dict order (pickles) rather than sorted.
        skipped: entries of a pickle's state dict that are not tensors (left out).
        chosen_file_note: for a run folder, which file was taken ("model.safetensors of
            checkpoint-6/"), else ``None``.
        notes: one-line remarks for the report (a prefix stripped, entries left out).
        layout: a token equal for checkpoints that hold the same keys with the same dtypes,
            shapes and relative offsets, each in one file (safetensors files whose headers list
            their tensors alike, after the same renames and filters); None when not known.
    """

    path: Path
    name: str
    metadata: dict[str, str]
    key_order_known: bool = False
    skipped: list[str] = []
    chosen_file_note: str | None = None
    layout: object | None = None
    notes: list[str]
    extra_files: list[Path]

    def __init__(self, path: Path, tensors: dict[str, TensorInfo], metadata: dict[str, str]):
        self.path = path
        self.name = path.name
        self._tensors = tensors
        self.metadata = metadata
        self.notes = []
        self.extra_files = []  # a run folder's model file, when ``path`` is the folder

    def keys(self) -> list[str]:
        return list(self._tensors)

    def info(self, key: str) -> TensorInfo:
        return self._tensors[key]

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    @property
    def files(self) -> list[Path]:
        """Every file this checkpoint reads (an output must never be one of them)."""
        return [self.path, *self.extra_files]

    def read_paths(self) -> list[ReadPath]:
        """What the output guard protects: every file, and a sharded checkpoint's folder."""
        return [describe(f) for f in self.files]

    def read_into(self, key: str, out: torch.Tensor, byte_offset: int = 0) -> None:
        """Fill the uint8 CPU tensor ``out`` with the key's bytes from ``byte_offset`` on."""
        raise NotImplementedError

    def location(self, key: str) -> tuple[Path, int] | None:
        """(file, absolute byte offset) of the key's bytes when they lie in place in one file,
        so that keys stored back to back can be read as one span; None when not (pickles)."""
        return None

    def read_span(self, key: str, out: torch.Tensor) -> None:
        """Fill ``out`` with the bytes from the start of ``key`` on, past its end into the keys
        stored after it in the same file (only where :meth:`location` says they follow)."""
        raise NotImplementedError

    def tensor(self, key: str) -> torch.Tensor:
        """The whole tensor, in fresh memory."""
        info = self.info(key)
        buf = torch.empty(info.nbytes, dtype=torch.uint8)
        self.read_into(key, buf)
        return buf.view(info.dtype).reshape(info.shape)

    def strip_prefixes(self, prefixes: Sequence[str] = ("module.", "_orig_mod.")) -> str | None:
        """Drop the given key prefixes (repeatedly); returns a note naming what was dropped."""
        renamed = strip_names(self._tensors, prefixes)
        seen: dict[str, str] = {}
        for old, new in renamed.items():
            if new in seen:
                raise WaError(
                    f"stripping prefixes from '{self.path}' maps {seen[new]!r} and {old!r} to "
                    f"{new!r}",
                    ExitCode.BAD_INPUT,
                )
            seen[new] = old
        changed = sum(old != new for old, new in renamed.items())
        if not changed:
            return None
        self._rename(renamed)
        used = [p for p in prefixes if any(o.startswith(p) for o in renamed)]
        note = f"stripped {', '.join(repr(p) for p in used)} from {changed} key(s) of {self.name}"
        self.notes.append(note)
        return note

    def keep_keys(self, keep: set[str]) -> None:
        """Leave out every key not in ``keep`` (``--include``/``--exclude``)."""
        self._tensors = {k: v for k, v in self._tensors.items() if k in keep}
        if self.layout is not None:  # alike layouts kept alike by the same filter
            self.layout = (self.layout, "keep", frozenset(keep))

    def _rename(self, renamed: dict[str, str]) -> None:
        self._tensors = {renamed[k]: v for k, v in self._tensors.items()}
        if self.layout is not None:
            self.layout = (self.layout, "rename", tuple(renamed.items()))

    def close(self) -> None:
        """Release open files; reading again reopens them."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self._tensors)} tensors)"


# Input files open at once, over all checkpoints: 500 inputs must work under `ulimit -n 64`.
MAX_OPEN_FILES = 16
_open_files: OrderedDict[int, PositionalFile] = OrderedDict()
_lock = threading.RLock()


class PositionalFile:
    """One input file, read through the descriptor it was opened with.

    Its identity (device, inode, size, modification time) is taken from that descriptor and
    checked at every read: a file replaced or rewritten between two passes (or while wa runs) is
    an error, never bytes of another file read at the first pass's offsets. The descriptor is
    closed when others need one (500 inputs under ``ulimit -n 64``); opening it again checks
    that the path still names the same regular file and never blocks on a FIFO swapped in
    (:func:`wa_cli.io.descriptors.reopen`).
    """

    def __init__(self, path: Path, fd: int | None = None):
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, ...] | None = None
        if fd is not None:
            self._identity = identity(os.fstat(fd))
            with _lock:
                self._make_room()
                self._fd = fd
                _open_files[id(self)] = self
            return
        try:
            self._identity = identity(os.stat(path))
        except OSError:
            self._identity = None

    def read(self, out: torch.Tensor, position: int, key: str) -> None:
        """Fill the uint8 tensor ``out`` with the bytes at ``position``; one-line errors."""
        n = out.numel()
        if n == 0:
            return
        with _lock:  # no other thread may close (and reuse) this descriptor mid-read
            fd = self._descriptor()
            self._read_all(fd, out, position, key)
            self._check(os.fstat(fd))
            self._check_path()

    def _check_path(self) -> None:
        """The path still names the file read (not a replacement, a FIFO, or nothing)."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise changed(self.path, f"it is gone: {e.strerror or e}") from e
        if not stat.S_ISREG(st.st_mode):
            raise changed(self.path, f"it is now a {special_kind(st.st_mode)}")
        self._check(st)

    def _read_all(self, fd: int, out: torch.Tensor, position: int, key: str) -> None:
        n = out.numel()
        view = memoryview(out.numpy()).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
        done = 0
        while done < n:
            try:
                got = os.preadv(fd, [view[done:]], position + done)
            except OSError as e:
                raise WaError(
                    f"cannot read {key!r} from '{self.path}': {e.strerror or e}",
                    ExitCode.BAD_INPUT,
                ) from e
            if got == 0:
                raise changed(self.path, f"it ended while reading {key!r}, {n - done} bytes short")
            done += got

    def _descriptor(self) -> int:
        if self._fd is not None:
            _open_files.move_to_end(id(self))
            return self._fd
        self._make_room()
        return self._open()

    def _make_room(self) -> None:
        while len(_open_files) >= MAX_OPEN_FILES:
            _, oldest = _open_files.popitem(last=False)
            oldest.close()

    def _open(self) -> int:
        fd = reopen(self.path, self._identity)
        if self._identity is None:
            self._identity = identity(os.fstat(fd))
        self._fd = fd
        _open_files[id(self)] = self
        return fd

    def _check(self, st: os.stat_result) -> None:
        if self._identity is None:
            self._identity = identity(st)
        elif identity(st) != self._identity:
            raise changed(self.path, "replaced or rewritten: its size, time or inode differ")

    def close(self) -> None:
        with _lock:
            _open_files.pop(id(self), None)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
